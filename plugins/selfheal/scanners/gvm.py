"""GvmHook: a Greenbone manager (gvmd) over GMP with the official ``python-gvm`` client.

Connection ``gvm_default`` (conn_type ``gvm``): login and password of a gvmd user,
and either extra ``socket_path`` (Unix socket, e.g. ``/run/gvmd/gvmd.sock``) or
host/port (TLS, default port 9390; extras ``cafile`` (the CA that signed gvmd's
certificate), ``certfile``/``keyfile`` (client certificate), ``check_hostname``
(default true), ``verify`` (default true; false only for a lab)). python-gvm's own
TLSConnection skips certificate verification unless client certificate, key and
CA are all given, which would hand the GMP password to any man in the middle; we
replace its socket set-up with a verifying one. Other extras: ``timeout`` (seconds
per socket read, default 60), ``max_response_mb`` (default 512), and the names of
the ``scan_config`` (default "Full and fast"), ``scanner`` ("OpenVAS Default") and
``port_list`` ("All IANA assigned TCP") new tasks use.

python-gvm negotiates the protocol itself (``GMP`` sends ``<get_version/>`` on a
first connection and picks its GMPv224..GMPNext class); every response is checked
with ``EtreeCheckCommandTransform``, whose ``GvmResponseError``/``GvmServerError`` we
map to the shared scanner error kinds: 400 "Authentication failed", 401 and 403
are credential problems, 404 a missing task or report, 5xx and socket trouble
are transient. The password is only ever handed to ``authenticate``.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from airflow.sdk import BaseHook, Connection
from gvm.connections import TLSConnection, UnixSocketConnection
from gvm.errors import GvmError, GvmResponseError, GvmServerError, InvalidArgument
from gvm.protocols.gmp import GMP
from gvm.transforms import EtreeCheckCommandTransform
from lxml import etree

from selfheal.scanners.errors import (
    ScannerAuthError,
    ScannerError,
    ScannerNotFoundError,
    ScannerTransientError,
)

DEFAULT_TLS_PORT = 9390
DEFAULT_TIMEOUT_S = 60.0
XML_REPORT_FORMAT_ID = "a994b278-1f62-11e1-96ac-406186ea4fc5"  # gvmd's built-in "XML" report format
# Every result, whatever the user's default filter says: no row limit, no QoD cut, no overrides.
FULL_REPORT_FILTER = "apply_overrides=0 min_qod=0 rows=-1 first=1"
ACTIVE_STATUSES = frozenset({"Requested", "Queued", "Running", "Stop Requested", "Processing"})
FAILED_STATUSES = frozenset({"Stopped", "Interrupted"})
NAME_PREFIX = "selfheal"


class GvmHookError(ScannerError):
    """A GMP call failed for a reason that waiting will not fix."""


class GvmAuthError(GvmHookError, ScannerAuthError):
    """gvmd refused the user or password (or the user may not do this)."""


class GvmNotFoundError(GvmHookError, ScannerNotFoundError):
    """The task, report or target asked for does not exist (GMP status 404)."""


class GvmTransientError(GvmHookError, ScannerTransientError):
    """gvmd is unreachable, closed the socket, or answered 5xx: retry later."""


@dataclass(frozen=True)
class GvmScan:
    """What `GvmHook.start_scan` started or found running; the ids are what the trigger polls."""

    task_id: str
    report_id: str
    target_id: str
    reused_running: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GvmTaskStatus:
    """A task's status, progress (0..100, or -1 when gvmd reports none) and, for failed scans, why."""

    task_id: str
    status: str
    progress: int
    report_id: str | None
    errors: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.status == "Done"

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES

    def message(self) -> str:
        why = "; ".join(self.errors) if self.errors else "the manager gave no error details"
        return f"GMP task {self.task_id} ended {self.status}: {why}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "errors": list(self.errors)}


class _BoundedRead:
    """Caps what one connection may read: python-gvm reads a response until its root closes, unbounded."""

    _max_bytes = 512 * 1024 * 1024
    _read_total = 0

    def read(self) -> bytes:
        data = super().read()  # type: ignore[misc]
        self._read_total += len(data)
        if self._read_total > self._max_bytes:
            raise GvmHookError(f"GMP response larger than {self._max_bytes} bytes; refusing to read more")
        return data


class _BoundedUnixSocketConnection(_BoundedRead, UnixSocketConnection):
    pass


class _VerifiedTLSConnection(_BoundedRead, TLSConnection):
    """TLS that verifies gvmd's certificate and host name (python-gvm's default verifies neither)."""

    verify = True
    check_hostname = True

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.certfile:
            context.load_cert_chain(certfile=self.certfile, keyfile=self.keyfile, password=self.password)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif not self.check_hostname:
            context.check_hostname = False
        return context

    def connect(self) -> None:
        raw = socket.create_connection((self.hostname, int(self.port)), timeout=self._timeout)
        try:
            self._socket = self._context().wrap_socket(raw, server_hostname=self.hostname)
        except BaseException:
            raw.close()
            raise
        self._socket.settimeout(self._timeout)


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() not in ("false", "0", "no", "off")


def _quoted(value: str, what: str) -> str:
    if '"' in value or "\n" in value:
        raise GvmHookError(f"{what} {value!r} cannot be used in a GMP filter (contains a quote or newline)")
    return f'"{value}"'


def _translate(e: Exception, where: str) -> ScannerError:
    """python-gvm's exceptions -> the shared kinds (auth / not found / transient / other)."""
    if isinstance(e, GvmResponseError):
        status, text = str(e.status or ""), e.message or ""
        if status in ("401", "403") or (status == "400" and "authentication failed" in text.lower()):
            return GvmAuthError(f"{where}: GMP {status} {text}; check the login/password of the connection")
        if status == "404":
            return GvmNotFoundError(f"{where}: GMP 404 {text}")
        return GvmHookError(f"{where}: GMP {status} {text}")
    if isinstance(e, GvmServerError):
        return GvmTransientError(f"{where}: GMP {e.status} {e.message}")
    if isinstance(e, InvalidArgument):
        return GvmHookError(f"{where}: {e}")
    if isinstance(e, GvmError):
        text = str(e)
        if "unsupported version" in text.lower():
            return GvmHookError(f"{where}: {text}")
        return GvmTransientError(f"{where}: {text}")
    if isinstance(e, ssl.SSLCertVerificationError):
        return GvmHookError(
            f"{where}: gvmd's TLS certificate is not trusted ({e.verify_message}); set extra cafile to the "
            "CA that signed it"
        )
    if isinstance(e, OSError):  # refused, reset, timeout, TLS handshake against a restarting daemon
        return GvmTransientError(f"{where}: {type(e).__name__}: {e}")
    if isinstance(e, etree.XMLSyntaxError):
        return GvmTransientError(f"{where}: unreadable GMP response ({e})")
    raise e


class GvmHook(BaseHook):
    """One gvmd: find-or-create target and task for a service, start it, poll it, fetch the full report."""

    conn_name_attr = "gvm_conn_id"
    default_conn_name = "gvm_default"
    conn_type = "gvm"
    hook_name = "Greenbone (GMP)"

    def __init__(self, gvm_conn_id: str = default_conn_name, *, connection: Connection | None = None) -> None:
        super().__init__()
        self.gvm_conn_id = gvm_conn_id
        self._connection = connection

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema"],
            "relabeling": {"login": "GMP user"},
            "placeholders": {
                "host": "TLS host (leave empty to use a Unix socket)",
                "port": str(DEFAULT_TLS_PORT),
                "extra": '{"socket_path": "/run/gvmd/gvmd.sock"}',
            },
        }

    @classmethod
    async def afor_conn_id(cls, gvm_conn_id: str = default_conn_name) -> GvmHook:
        """A hook for use inside a trigger: the connection is read through Airflow's async path."""
        return cls(gvm_conn_id, connection=await cls.aget_connection(gvm_conn_id))

    def _conn(self) -> Connection:
        if self._connection is None:
            self._connection = self.get_connection(self.gvm_conn_id)
        return self._connection

    @property
    def address(self) -> str:
        conn = self._conn()
        path = conn.extra_dejson.get("socket_path")
        return f"unix:{path}" if path else f"tls:{conn.host}:{conn.port or DEFAULT_TLS_PORT}"

    def _transport(self) -> UnixSocketConnection | TLSConnection:
        conn = self._conn()
        extra = conn.extra_dejson
        timeout = float(extra.get("timeout", DEFAULT_TIMEOUT_S))
        transport: _BoundedUnixSocketConnection | _VerifiedTLSConnection
        if extra.get("socket_path"):
            transport = _BoundedUnixSocketConnection(path=str(extra["socket_path"]), timeout=timeout)
        elif conn.host:
            transport = _VerifiedTLSConnection(
                hostname=conn.host,
                port=conn.port or DEFAULT_TLS_PORT,
                cafile=extra.get("cafile"),
                certfile=extra.get("certfile"),
                keyfile=extra.get("keyfile"),
                timeout=timeout,
            )
            transport.verify = _flag(extra.get("verify", True))
            transport.check_hostname = _flag(extra.get("check_hostname", True))
            if not transport.verify:
                self.log.warning("connection %s: gvmd's TLS certificate is NOT verified", self.gvm_conn_id)
        else:
            raise GvmHookError(f"connection {self.gvm_conn_id!r}: needs extra socket_path or a host for TLS")
        transport._max_bytes = int(float(extra.get("max_response_mb", 512)) * 1024 * 1024)
        return transport

    def get_conn(self) -> GMP:
        """An unauthenticated python-gvm ``GMP`` (use `session` to get a connected, logged-in one)."""
        return GMP(self._transport(), transform=EtreeCheckCommandTransform())

    @contextmanager
    def session(self) -> Iterator[Any]:
        """A connected, authenticated GMP object of the version the manager speaks; errors translated."""
        conn = self._conn()
        where = f"gvmd at {self.address}"
        try:
            with self.get_conn() as gmp:
                gmp.authenticate(conn.login or "", conn.password or "")
                yield gmp
        except ScannerError:
            raise
        except Exception as e:  # noqa: BLE001 - _translate re-raises what it does not know
            raise _translate(e, where) from None

    # --- operations -----------------------------------------------------------------------------

    def version(self) -> str:
        with self.session() as gmp:
            return str(gmp.get_version().findtext("version") or "")

    def test_connection(self) -> tuple[bool, str]:
        try:
            return True, f"GMP {self.version()} at {self.address}"
        except ScannerError as e:
            return False, str(e)

    @staticmethod
    def _id_by_name(gmp: Any, kind: str, name: str) -> str:
        method, tag = {
            "scan config": (gmp.get_scan_configs, "config"),
            "scanner": (gmp.get_scanners, "scanner"),
            "port list": (gmp.get_port_lists, "port_list"),
        }[kind]
        root = method(filter_string=f"name={_quoted(name, kind)} rows=-1")
        for el in root.iterfind(tag):
            if el.findtext("name") == name and el.get("id"):
                return str(el.get("id"))
        raise GvmNotFoundError(f"gvmd has no {kind} named {name!r}")

    def ensure_target(self, gmp: Any, name: str, hosts: Sequence[str], port_list_id: str) -> str:
        """The target called `name`, created if missing (the name holds a hash of the hosts)."""
        for attempt in range(2):
            root = gmp.get_targets(filter_string=f"name={_quoted(name, 'target name')} rows=-1")
            for el in root.iterfind("target"):
                if el.findtext("name") == name:
                    return str(el.get("id"))
            if attempt:
                break
            try:
                return str(gmp.create_target(name, hosts=list(hosts), port_list_id=port_list_id).get("id"))
            except GvmResponseError as e:
                if "exists already" not in (e.message or ""):
                    raise
                # created concurrently by another task: look it up again
        raise GvmHookError(f"target {name!r} exists but could not be read back")

    def ensure_task(self, gmp: Any, name: str, *, target_id: str, config_id: str, scanner_id: str) -> str:
        root = gmp.get_tasks(filter_string=f"name={_quoted(name, 'task name')} rows=-1")
        for el in root.iterfind("task"):
            target = el.find("target")
            if el.findtext("name") == name and target is not None and target.get("id") == target_id:
                return str(el.get("id"))
        return str(gmp.create_task(name, config_id, target_id, scanner_id).get("id"))

    def start_scan(
        self,
        service: str,
        hosts: Sequence[str],
        *,
        scan_config: str | None = None,
        scanner: str | None = None,
        port_list: str | None = None,
    ) -> GvmScan:
        """Create or reuse target and task ``selfheal <service> [<hash>]`` and start it.

        Idempotent for retries: when the task is already running, its current
        report is returned instead of an error ("Task is active already").
        """
        if not hosts:
            raise GvmHookError(f"service {service!r}: no hosts to scan")
        extra = self._conn().extra_dejson
        config_name = scan_config or extra.get("scan_config", "Full and fast")
        scanner_name = scanner or extra.get("scanner", "OpenVAS Default")
        port_list_name = port_list or extra.get("port_list", "All IANA assigned TCP")
        digest = hashlib.sha256(
            "|".join([*sorted(hosts), port_list_name, config_name, scanner_name]).encode()
        ).hexdigest()[:8]
        name = f"{NAME_PREFIX} {service} [{digest}]"
        with self.session() as gmp:
            port_list_id = self._id_by_name(gmp, "port list", port_list_name)
            target_id = self.ensure_target(gmp, name, hosts, port_list_id)
            task_id = self.ensure_task(
                gmp,
                name,
                target_id=target_id,
                config_id=self._id_by_name(gmp, "scan config", config_name),
                scanner_id=self._id_by_name(gmp, "scanner", scanner_name),
            )
            task = gmp.get_task(task_id).find("task")
            status = task.findtext("status") if task is not None else None
            if status in ACTIVE_STATUSES:
                current = task.find("current_report/report")
                if current is not None and current.get("id"):
                    self.log.info(
                        "GMP task %s is already %s; following report %s", task_id, status, current.get("id")
                    )
                    return GvmScan(task_id, str(current.get("id")), target_id, reused_running=True)
            report_id = gmp.start_task(task_id).findtext("report_id")
            if not report_id:
                raise GvmHookError(f"GMP start_task {task_id}: the answer carries no report_id")
            self.log.info("GMP task %s (%s) started; report %s", task_id, name, report_id)
            return GvmScan(task_id, report_id, target_id)

    def task_status(self, task_id: str, *, with_errors: bool = True) -> GvmTaskStatus:
        """Status and progress of a task; for Stopped/Interrupted also the error lines of its report."""
        with self.session() as gmp:
            task = gmp.get_task(task_id).find("task")
            if task is None:
                raise GvmNotFoundError(f"GMP get_tasks {task_id}: the answer holds no task")
            status = task.findtext("status") or ""
            try:
                progress = int(float(task.findtext("progress") or "-1"))
            except ValueError:
                progress = -1
            report = task.find("current_report/report")
            if report is None:
                report = task.find("last_report/report")
            report_id = report.get("id") if report is not None else None
            errors: tuple[str, ...] = ()
            if with_errors and status in FAILED_STATUSES and report_id:
                errors = self._report_errors(gmp, report_id)
            return GvmTaskStatus(task_id, status, progress, report_id, errors)

    @staticmethod
    def _report_errors(gmp: Any, report_id: str) -> tuple[str, ...]:
        root = gmp.get_report(report_id, filter_string="rows=1 first=1 min_qod=0", details=True)
        lines = []
        for err in root.iterfind("report/report/errors/error"):
            host = (err.findtext("host") or "").strip()
            text = " ".join((err.findtext("description") or "").split())[:300]
            lines.append(f"{host}: {text}" if host else text)
        return tuple(lines[:5])

    def report_xml(self, report_id: str) -> bytes:
        """The whole report (every result: no rows limit, no QoD cut) as GMP ``get_reports_response`` XML.

        Raises if the manager still paginated (``<results max>`` set and reached),
        so a cut report is never ingested as if it were complete.
        """
        with self.session() as gmp:
            root = gmp.get_report(
                report_id,
                filter_string=FULL_REPORT_FILTER,
                report_format_id=XML_REPORT_FORMAT_ID,
                ignore_pagination=True,
                details=True,
            )
            results = root.find("report/report/results")
            if results is not None:
                limit = results.get("max", "-1")
                count = len(results.findall("result"))
                if limit not in ("", "-1") and limit.isdigit() and count >= int(limit):
                    raise GvmHookError(
                        f"GMP report {report_id}: the manager returned a page of {count} results "
                        f"(max={limit}) despite ignore_pagination; refusing a possibly cut report"
                    )
            return etree.tostring(root, encoding="utf-8", xml_declaration=False)
