"""Log context: finding and patch ids on every log line the pipeline writes.

Why a context and not ``extra=``: the ids are known at a few entry points (a
task handling one finding, a sandbox verifying one patch, a rollout) while
the lines are written deep below them, often by code that has never heard of
the finding (docker, the gateway client, a parser). A ``contextvars`` value
set at the entry point reaches every line written underneath, in this thread
or asyncio task, without threading ids through every signature.

API (the only thing call sites need)::

    from selfheal.logs import log_context, with_log_context

    with log_context(finding_id=row.id, patch_id=plan.id, service=svc.name):
        ...   # every line logged in here carries finding_id=... patch_id=... service=...

    @with_log_context("service", patch_id="patch_id")    # from the call's arguments
    def run_canary(backend, analysis, service, *, patch_id=None, ...): ...

    @with_log_context(finding_id="rule.finding", rule_id="rule.id")   # dotted: attribute of an argument
    def apply(self, rule): ...

Keys in use: ``finding_id`` (triage DB id when known, else the fingerprint),
``patch_id``, ``service``, ``scanner``, ``scan_run_id``, ``rule_id`` (a gateway
virtual patch), ``strategy`` (a rollout), ``sandbox_id``. Contexts nest (inner
keys add to or override outer ones, and are restored on exit); ``None`` values
are skipped, so optional ids need no branching at the call site.

Where the ids show up:

* In Airflow (task logs, the triggerer, the API server) nothing needs
  installing: Airflow 3 logs through structlog, whose processor chain (also
  applied to stdlib ``logging`` records as ``foreign_pre_chain``) merges
  structlog's context variables into every event. ``log_context`` binds the
  ids there too, so every line of the task log, selfheal's and Airflow's own,
  is a JSON object with ``"finding_id": ...`` members, which the UI's log view
  shows as ``finding_id=...`` after the message.
* Elsewhere (the CLI, the demo, benchmarks) call ``configure()`` once: one
  handler on the ``selfheal`` logger whose ``ContextFilter`` attaches the
  context to each record and whose formatter appends it as logfmt
  (``... message finding_id=12 patch_id=p-3``) or writes one JSON object a line.

Threads start with an EMPTY context (asyncio tasks copy theirs on creation):
hand work to a thread as ``propagate(fn)`` to carry the caller's ids along.

Secrets never appear: a key that names a credential (``token``, ``password``,
... as ``selfheal.audit.redact`` decides) is refused with ``ValueError``;
values are masked where they have a credential's shape (a URL with a
password, a bearer token), stripped of control characters (no forged lines)
and cut at ``MAX_VALUE`` characters; ``configure()``'s formatters also mask
credential shapes in the whole rendered line.

Standard library only at import (this module is imported by task modules
that DAG files import at parse time); structlog and the redaction rules load
on first use.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import IO, Any, ParamSpec, TypeVar

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "LogfmtFormatter",
    "configure",
    "current",
    "log_context",
    "logfmt",
    "propagate",
    "with_log_context",
]

P = ParamSpec("P")
R = TypeVar("R")

MAX_VALUE = 200
LOGGER_NAME = "selfheal"
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Names structlog, Airflow's task log and logging.LogRecord already use: binding one would overwrite
# the event's own field (or be overwritten by it) and the id would silently vanish or corrupt the line.
_RESERVED_WORDS = (
    "event level timestamp logger logger_name exception exc_info stack_info error_detail message msg "
    "args name levelname levelno pathname filename module lineno funcname created msecs thread "
    "threadname process processname taskname chan loc "
    # bound by Airflow's task runner and execution API around a task
    "ti ti_id dag_id task_id run_id map_index try_number hostname correlation_id"
)
RESERVED = frozenset(_RESERVED_WORDS.split())
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "selfheal_log_context", default=_EMPTY
)


def current() -> Mapping[str, Any]:
    """The ids bound here (read-only; empty outside any ``log_context``)."""
    return _CONTEXT.get()


@functools.cache
def _redact() -> tuple[Callable[[str], bool], Callable[[str], str]]:
    # Lazy: selfheal.audit pulls in SQLAlchemy, which DAG parsing must not pay for.
    from selfheal.audit.redact import is_secret_key, redact_text

    return is_secret_key, redact_text


@functools.cache
def _structlog_contextvars() -> Any:
    """structlog.contextvars when structlog is installed (it is wherever Airflow is), else None."""
    try:
        import structlog.contextvars as sc
    except ImportError:
        return None
    return sc


def _check_key(key: str) -> None:
    if not _KEY.match(key) or key in RESERVED:
        raise ValueError(
            f"log context key {key!r}: use a lower-case name ([a-z][a-z0-9_]*) that is not one of "
            f"the log record's own fields"
        )
    if _redact()[0](key):
        raise ValueError(f"log context key {key!r} names a credential: secrets never go into logs")


def _clean(value: Any) -> str | int:
    """An id fit for a log line: ints stay ints (JSON logs), the rest becomes safe, bounded text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = _CONTROL.sub(" ", str(value)).strip()
    text = _redact()[1](text)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


@contextlib.contextmanager
def log_context(**ids: Any) -> Iterator[Mapping[str, Any]]:
    """Bind ``ids`` for every line logged inside the block (this thread / asyncio task)."""
    clean = {}
    for key, value in ids.items():
        _check_key(key)
        if value is not None:
            clean[key] = _clean(value)
    merged = MappingProxyType({**_CONTEXT.get(), **clean})
    token = _CONTEXT.set(merged)
    sc = _structlog_contextvars()
    tokens = sc.bind_contextvars(**clean) if sc is not None and clean else None
    try:
        yield merged
    finally:
        if tokens:
            sc.reset_contextvars(**tokens)
        _CONTEXT.reset(token)


def _resolver(path: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``"plan.id|plan.patch_id"`` -> ((root, attrs), ...): alternatives, tried in order."""
    out = []
    for alt in path.split("|"):
        root, *attrs = alt.strip().split(".")
        out.append((root, tuple(attrs)))
    return tuple(out)


def _lookup(value: Any, attrs: tuple[str, ...]) -> Any:
    for a in attrs:
        value = value.get(a) if isinstance(value, Mapping) else getattr(value, a, None)
        if value is None:
            return None
    return value


def with_log_context(*names: str, **paths: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: run the function inside ``log_context`` built from its arguments.

    ``names`` bind an argument under its own name; ``paths`` map a key to an
    argument or a dotted member of one (attribute, or key of a mapping:
    ``rule_id="rule.id"``, ``service="handle.service"``), with ``|`` between
    alternatives tried in order (``patch_id="plan.id|plan.patch_id"``).
    Argument names are checked when decorating (a typo fails at import); a
    missing member, ``None`` or ``""`` at call time just leaves that key out.
    """
    spec = {n: _resolver(n) for n in names} | {k: _resolver(v) for k, v in paths.items()}
    for key in spec:
        _check_key(key)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        sig = inspect.signature(fn)
        for key, alternatives in spec.items():
            for root, _ in alternatives:
                if root not in sig.parameters:
                    raise TypeError(
                        f"with_log_context on {fn.__qualname__}: no argument {root!r} (for {key!r})"
                    )

        def ids_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            try:
                bound = sig.bind_partial(*args, **kwargs)
            except TypeError:
                return {}  # the call itself is wrong; let the function raise its own error
            bound.apply_defaults()
            out = {}
            for key, alternatives in spec.items():
                for root, attrs in alternatives:
                    value = _lookup(bound.arguments.get(root), attrs)
                    if value is not None and value != "" and not callable(value):
                        out[key] = value
                        break
            return out

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with log_context(**ids_of(args, kwargs)):
                    return await fn(*args, **kwargs)

            return awrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with log_context(**ids_of(args, kwargs)):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def propagate(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` bound to a copy of the caller's context, for ``threading.Thread`` / executor ``submit``."""
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        # A copy per call: one Context cannot be entered by two threads at once.
        return ctx.copy().run(fn, *args, **kwargs)

    return run


# ----------------------------------------------------------------------------------- rendering

_BARE = re.compile(r"^[A-Za-z0-9_.:/@+,-]+$")


def logfmt(ids: Mapping[str, Any]) -> str:
    """``k=v k2="v 2"`` (logfmt: values with spaces, quotes or ``=`` are quoted and escaped)."""
    parts = []
    for k, v in ids.items():
        s = str(v)
        if not _BARE.match(s):
            s = '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{k}={s}")
    return " ".join(parts)


class ContextFilter(logging.Filter):
    """Attach the current ids to each record: ``record.log_context`` (dict) and ``record.log_context_text``.

    Never drops a record. Put it on a handler (it sees every record of the
    loggers below that handler's logger; a filter on a logger would only see
    records logged to that exact logger, not its children).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "log_context"):  # first handler wins: the ids of where it was logged
            ids = dict(current())
            record.log_context = ids
            record.log_context_text = (" " + logfmt(ids)) if ids else ""
        return True


def _ids(record: logging.LogRecord) -> dict[str, Any]:
    ids = getattr(record, "log_context", None)
    return dict(current()) if ids is None else ids


class LogfmtFormatter(logging.Formatter):
    """The usual text line, then the ids as logfmt; credential shapes masked in the whole line."""

    def __init__(self, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s", **kw: Any) -> None:
        super().__init__(fmt, **kw)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = _ids(record)
        if ids:
            line = f"{line} {logfmt(ids)}"
        return _redact()[1](line)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: timestamp, level, logger, event, the ids, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_ids(record),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        redact_text = _redact()[1]
        for k in ("event", "exception"):
            if k in out:
                out[k] = redact_text(out[k])
        return json.dumps(out, default=str, ensure_ascii=False)


_HANDLER_MARK = "_selfheal_logs_handler"


def configure(
    stream: IO[str] | None = None, *, json_lines: bool = False, level: int = logging.INFO
) -> logging.Handler:
    """Outside Airflow: one handler on the ``selfheal`` logger writing lines with the ids.

    Idempotent (a second call replaces the first handler). The ``selfheal``
    logger stops propagating to the root, so a root handler (a test runner's,
    say) does not print every line twice. Do not call it inside Airflow tasks:
    there the ids already reach the task log through structlog (see above).
    """
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        if getattr(h, _HANDLER_MARK, False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json_lines else LogfmtFormatter())
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
