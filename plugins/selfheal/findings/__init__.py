"""Findings: the normalized model, scanner parsers, fingerprints and dedupe.

The heavy parts (parsers: msgspec, defusedxml) are imported on first use, so
importing ``selfheal.findings.model`` from a DAG file stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selfheal.findings.fingerprint import dedupe, fingerprint, path_template
    from selfheal.findings.parsers import FORMATS, detect_format, iter_findings, parse_bytes

_LAZY = {
    "parse_bytes": "selfheal.findings.parsers",
    "iter_findings": "selfheal.findings.parsers",
    "detect_format": "selfheal.findings.parsers",
    "FORMATS": "selfheal.findings.parsers",
    "dedupe": "selfheal.findings.fingerprint",
    "fingerprint": "selfheal.findings.fingerprint",
    "path_template": "selfheal.findings.fingerprint",
}

__all__ = ["FORMATS", "dedupe", "detect_format", "fingerprint", "iter_findings", "parse_bytes", "path_template"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
