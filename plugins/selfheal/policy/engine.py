"""Evaluate the Rego policies in ``include/policies`` with regopy (rego-cpp).

Policies are data: the engine compiles whatever ``*.rego`` files the policy
directory holds (``*_test.rego`` excluded) into one bundle, and recompiles
when a file changes (checked by size and mtime on every call, a few stat()s),
so editing a policy changes decisions with no code change and no restart.
The compiled bundle is cached per directory: a decision is one query against
precompiled plans, not a parse and compile per call.

regopy 1.5.2 quirks handled here (found while building this):
* ``str()`` / ``node()`` of a failed ``Output`` segfaults: errors are read with
  ``rego_get_error`` from the interpreter instead;
* parse errors are printed to the console by default: the log level is set to NONE
  and the error is returned as one line naming file, line and column;
* ``with input as {...}`` (replacing the whole input) fails to compile; the
  Rego tests replace single fields (``with input.finding as f``), which works;
* ``sprintf("%s", [concat(...)])`` wraps the string in raw, unescaped quotes, which
  breaks the result JSON: the policies build such messages with ``concat``, and a
  result that does not parse is reported as a PolicyError, never half-read.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regopy import Input, Interpreter, LogLevel, RegoError
from regopy.rego_shared import rego_get_error

from selfheal.paths import INCLUDE_DIR

DEFAULT_POLICY_DIR = INCLUDE_DIR / "policies"
ENTRYPOINTS = ("selfheal/remediation/result", "selfheal/admission/result", "selfheal/modes/result")


class PolicyError(RuntimeError):
    """A policy does not compile, fails at evaluation, or returns an unexpected shape."""


@dataclass(frozen=True)
class _Compiled:
    stamp: tuple[tuple[str, int, int], ...]
    digest: str
    bundle: Any  # regopy.Bundle
    builder: Interpreter  # keeps the bundle's owner alive
    runner: Interpreter
    sources: dict[str, str]


def policy_files(policy_dir: Path) -> list[Path]:
    """The policy modules (not their tests), in a stable order."""
    return sorted(p for p in policy_dir.glob("*.rego") if not p.name.endswith("_test.rego"))


def _stamp(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in files:
        st = p.stat()
        out.append((p.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


_ERR = re.compile(r"\(error (\d+):")
_SPAN = re.compile(r"\|(\d+)\|(\d+)")


def _take(text: str, i: int) -> tuple[str, int]:
    """Read a length-prefixed atom ``<n>:<n chars>`` starting at ``i``."""
    colon = text.index(":", i)
    n = int(text[i:colon])
    return text[colon + 1 : colon + 1 + n], colon + 1 + n


def format_rego_error(raw: str, sources: Mapping[str, str] | None = None) -> str:
    """Turn rego-cpp's s-expression error list into ``file:line:col: message; ...``."""
    out: list[str] = []
    pos = 0
    while (m := _ERR.search(raw, pos)) is not None:
        try:
            where, after = _take(raw, m.start(1))
            span = _SPAN.match(raw, after)
            offset = span.group(1) if span else ""
            mi = raw.index("(errormsg ", after) + len("(errormsg ")
            msg, pos = _take(raw, mi)
        except (ValueError, IndexError):
            break
        loc = where
        src = (sources or {}).get(where)
        if src is not None and offset.isdigit():
            before = src[: int(offset)]
            loc = f"{where}:{before.count(chr(10)) + 1}:{int(offset) - before.rfind(chr(10))}"
        out.append(f"{loc}: {msg}")
    if not out:
        return " ".join(raw.split()) or "evaluation failed (no message; e.g. conflicting values for one rule)"
    return "; ".join(dict.fromkeys(out))


class PolicyEngine:
    """Compiled policies of one directory; thread-safe, one evaluation at a time per engine."""

    def __init__(self, policy_dir: Path | str | None = None, *, check_interval: float = 1.0) -> None:
        """``check_interval``: seconds between checks for changed policy files (0: every call)."""
        self.policy_dir = Path(policy_dir) if policy_dir else DEFAULT_POLICY_DIR
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._compiled: _Compiled | None = None
        self._checked_at = 0.0

    def _compile(self, files: list[Path], stamp: tuple[tuple[str, int, int], ...]) -> _Compiled:
        if not files:
            raise PolicyError(f"{self.policy_dir}: no .rego policy files")
        sources = {p.name: p.read_text(encoding="utf-8") for p in files}
        builder = Interpreter()
        builder.log_level = LogLevel.NONE
        try:
            for name, src in sources.items():
                builder.add_module(name, src)
            bundle = builder.build(None, list(ENTRYPOINTS))
        except RegoError as e:
            raise PolicyError(f"{self.policy_dir}: {format_rego_error(str(e), sources)}") from e
        if not bundle.ok():
            raise PolicyError(
                f"{self.policy_dir}: {format_rego_error(rego_get_error(builder._impl), sources)}"
            )
        runner = Interpreter()
        runner.log_level = LogLevel.NONE
        h = hashlib.sha256()
        for name, src in sources.items():
            h.update(name.encode() + b"\0" + src.encode() + b"\0")
        return _Compiled(stamp, h.hexdigest()[:16], bundle, builder, runner, sources)

    def _current(self) -> _Compiled:
        now = time.monotonic()
        if self._compiled is not None and now - self._checked_at < self.check_interval:
            return self._compiled
        files = policy_files(self.policy_dir) if self.policy_dir.is_dir() else []
        stamp = _stamp(files)
        if self._compiled is None or self._compiled.stamp != stamp:
            self._compiled = self._compile(files, stamp)
        self._checked_at = now
        return self._compiled

    @property
    def digest(self) -> str:
        """Short SHA-256 of the policy sources in force (recorded with every decision)."""
        with self._lock:
            return self._current().digest

    def evaluate(self, entrypoint: str, input_doc: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """Evaluate one entrypoint (e.g. ``selfheal/remediation/result``); returns (value, digest)."""
        if entrypoint not in ENTRYPOINTS:
            raise PolicyError(f"unknown entrypoint {entrypoint!r}; known: {', '.join(ENTRYPOINTS)}")
        # Round-trip through JSON: the policy sees exactly what an audit entry would record.
        doc = json.loads(json.dumps(input_doc, default=str))
        with self._lock:
            c = self._current()
            value = Input(doc)
            c.runner.set_input(value)
            try:
                out = c.runner.query_bundle_entrypoint(c.bundle, entrypoint)
            except json.JSONDecodeError as e:
                # regopy builds the result JSON itself and can emit it unescaped (see module doc).
                raise PolicyError(
                    f"{entrypoint}: the policy produced a result regopy cannot encode: {e}"
                ) from e
            if not out.ok():
                raise PolicyError(
                    f"{entrypoint}: {format_rego_error(rego_get_error(c.runner._impl), c.sources)}"
                )
            results = out.results
            del value
        if not results or not results[0].expressions:
            raise PolicyError(f"{entrypoint}: undefined for this input (does the policy define it?)")
        result = results[0].expressions[0]
        if not isinstance(result, dict):
            raise PolicyError(f"{entrypoint}: expected an object, got {type(result).__name__}")
        return result, c.digest


_engines: dict[Path, PolicyEngine] = {}
_engines_lock = threading.Lock()


def engine_for(policy_dir: Path | str | None = None) -> PolicyEngine:
    """The shared engine of a directory (compiled once per process, recompiled on change)."""
    key = (Path(policy_dir) if policy_dir else DEFAULT_POLICY_DIR).resolve()
    with _engines_lock:
        if key not in _engines:
            _engines[key] = PolicyEngine(key)
        return _engines[key]
