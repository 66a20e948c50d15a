"""Sandbox: build patched images and verify them in isolated containers.

Entry point: ``verify_patch(plan, repo=..., commit=..., service=...)`` (see
``selfheal.sandbox.verify``) returns a JSON-ready ``VerificationResult``;
``cleanup_stale(client)`` removes sandboxes whose owner died. Names are
loaded on first use, so importing this package (e.g. from a DAG file) does
not import docker-py.
"""

from __future__ import annotations

import importlib
from typing import Any

# The offline base image (include/sandbox/base-image/build.sh); on a machine
# with internet the Dockerfiles take BASE_IMAGE=python:3.11-slim instead.
DEFAULT_BASE_IMAGE = "selfheal/base:bookworm"

_LAZY = {
    "verify_patch": "selfheal.sandbox.verify",
    "docker_client": "selfheal.sandbox.verify",
    "cleanup_stale": "selfheal.sandbox.isolation",
    "leftovers": "selfheal.sandbox.isolation",
    "VerificationResult": "selfheal.sandbox.result",
    "CheckResult": "selfheal.sandbox.result",
    "Limits": "selfheal.sandbox.spec",
    "SandboxSpec": "selfheal.sandbox.spec",
    "spec_from_plan": "selfheal.sandbox.spec",
}

__all__ = ["DEFAULT_BASE_IMAGE", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
