"""GmpDouble: a Greenbone manager (gvmd) on a Unix socket, speaking real GMP XML.

The real ``python-gvm`` client connects to it unchanged. Wire format, as gvmd and
python-gvm 27 do it: a stream socket carrying one XML command at a time; each
response is one XML document, which the client reads until the root element
closes (python-gvm's XmlReader). python-gvm first opens a connection only for
``<get_version/>`` (to pick its GMP class: 22.4 to 22.8 are supported), closes it,
and opens the working connection.

Implemented (status codes and texts as gvmd's gmp_base.h defines them):

- ``get_version`` (``<version>`` = ``gmp_version``, default 22.6), ``authenticate``
  (wrong user/password -> 400 "Authentication failed"; every other command
  before it -> 401 "Authenticate first"), unknown commands -> 400 "Bogus command name".
- ``get_configs``, ``get_scanners``, ``get_port_lists`` with gvmd's built-in
  objects and their well-known UUIDs (Full and fast, OpenVAS Default, All IANA
  assigned TCP, ...).
- ``get_targets``/``create_target`` (hosts, port_list; duplicate name -> 400
  "Target exists already"), ``get_tasks`` (list with ``filter``, or one by
  ``task_id``; unknown -> 404 "Failed to find task '<id>'"), ``create_task``
  (201 with id), ``start_task`` (202 with ``<report_id>``; an active task -> 400
  "Task is active already"), ``stop_task``.
- ``get_reports report_id=...`` returning the XML report format
  (a994b278-...) envelope: outer ``<report format_id content_type="text/xml">``,
  inner ``<report>`` with scan_run_status, task/target, ports, results,
  result_count, hosts, errors. Results are the real results of the sample
  reports in tests/fixtures/scanner-samples/openvas/ (one_vuln.xml,
  report_detail_v2.xml) copied onto the target's hosts and several ports, plus one
  low-QoD (30) log result. gvmd's result filtering is honoured where it decides
  what a client gets: ``rows`` (default 10, gvmd's default Rows Per Page),
  ``first`` (1-based), ``min_qod`` (default 70), and ``ignore_pagination="1"``.
- Filters: ``key=value`` (exact; quotes allowed), ``key~value`` (contains) on
  ``name``; ``rows``/``first``/``min_qod``; other keywords are echoed, not applied.
- Task life cycle driven by time: Requested, then Running with progress 1..99,
  then ``final_status`` (Done, or Stopped/Interrupted with an error in the
  report's ``<errors>``); ``<progress>`` is -1 outside Running, as gvmd reports it.

Transport: a Unix socket (``socket_path``), or TLS on loopback
(``tls=(certfile, keyfile)``, gvmd's port 9390 set-up). Not implemented: every other GMP command, permissions,
users, schedules, alerts, overrides, notes, delta reports, report formats other
than XML, sorting. Knobs for failure tests: ``busy_next(n)`` (503 "Service
temporarily down", gvmd's answer while its scanner is unavailable),
``drop_next(n)`` (close the next n connections without answering: socket gone),
``hang_at`` (a task never passes that progress), ``stop()``/``start()`` (the
socket file disappears: the manager is down).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import socket
import socketserver
import ssl
import threading
import time
import uuid
import xml.etree.ElementTree as StdET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "fixtures" / "scanner-samples" / "openvas"
DEFAULT_SAMPLES = (SAMPLES / "one_vuln.xml", SAMPLES / "report_detail_v2.xml")
XML_FORMAT_ID = "a994b278-1f62-11e1-96ac-406186ea4fc5"
CONFIGS = {
    "daba56c8-73ec-11df-a475-002264764cea": "Full and fast",
    "d21f6c81-2b88-4ac1-b7b4-a2a9f2ad4663": "Base",
    "8715c877-47a0-438d-98a3-27c7a6ab2196": "Discovery",
    "085569ce-73ed-11df-83c3-002264764cea": "empty",
}
SCANNERS = {
    "08b69003-5fc2-4037-a479-93b440211c73": ("OpenVAS Default", "2"),
    "6acd0832-df90-11e4-b9d5-28d24461215b": ("CVE", "3"),
}
PORT_LISTS = {
    "33d0cd82-57c6-11e1-8ed1-406186ea4fc5": "All IANA assigned TCP",
    "4a4717fe-57d2-11e1-9a26-406186ea4fc5": "All IANA assigned TCP and UDP",
    "730ef368-57e2-11e1-a90f-406186ea4fc5": "All TCP and Nmap top 100 UDP",
}
PORTS = ("general/tcp", "22/tcp", "42/tcp", "135/tcp", "443/tcp", "445/tcp", "3389/tcp", "8080/tcp")
ACTIVE = ("Requested", "Queued", "Running", "Stop Requested")


class GmpFailure(Exception):
    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _el(
    tag: str, text: str | None = None, parent: StdET.Element | None = None, **attrib: str
) -> StdET.Element:
    e = StdET.Element(tag, attrib) if parent is None else StdET.SubElement(parent, tag, attrib)
    if text is not None:
        e.text = text
    return e


def parse_filter(term: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """gvmd filter terms: ``key=value``, ``key~value``, ``key="quoted value"``, bare words."""
    keywords: dict[str, tuple[str, str]] = {}
    words: list[str] = []
    i, n = 0, len(term)
    while i < n:
        while i < n and term[i].isspace():
            i += 1
        j = i
        while j < n and (term[j].isalnum() or term[j] in "_-"):
            j += 1
        if j < n and j > i and term[j] in "=~<>:":
            key, op, j = term[i:j].lower(), term[j], j + 1
            if j < n and term[j] == '"':
                end = term.find('"', j + 1)
                end = n if end < 0 else end
                value, i = term[j + 1 : end], end + 1
            else:
                end = j
                while end < n and not term[end].isspace():
                    end += 1
                value, i = term[j:end], end
            keywords[key] = (op, value)
        else:
            end = i
            while end < n and not term[end].isspace():
                end += 1
            if end > i:
                words.append(term[i:end])
            i = end
    return keywords, words


def _name_matches(name: str, keywords: dict[str, tuple[str, str]]) -> bool:
    if "name" not in keywords:
        return True
    op, value = keywords["name"]
    return name == value if op == "=" else value.lower() in name.lower()


def load_sample_results(paths: tuple[Path, ...]) -> list[StdET.Element]:
    """The <result> elements of real GMP reports (parsed with defusedxml, rebuilt as stdlib elements)."""
    out: list[StdET.Element] = []
    for path in paths:
        root = SafeET.parse(path).getroot()
        for res in root.iter("result"):
            if res.find("nvt") is not None:
                out.append(StdET.fromstring(StdET.tostring(res)))
    if not out:
        raise ValueError(f"no <result> in {', '.join(map(str, paths))}")
    return out


@dataclass
class _Task:
    task_id: str
    name: str
    config_id: str
    target_id: str
    scanner_id: str
    created: str
    status: str = "New"
    started: float | None = None
    report_id: str | None = None
    reports: list[str] = field(default_factory=list)
    stopped_at: float | None = None


@dataclass
class _Target:
    target_id: str
    name: str
    hosts: list[str]
    port_list_id: str


class _TlsServer(socketserver.ThreadingTCPServer):
    """gvmd's TLS listener (port 9390 in real life): TCP on loopback, TLS 1.2+ with the given certificate."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, certfile: Path, keyfile: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(certfile, keyfile)
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # the handshake runs in the handler's thread (first recv), not in the accept loop
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client rejecting our certificate is an expected outcome of some tests


class GmpDouble:
    """gvmd on a Unix socket (or TLS on loopback); see the module docstring for what it implements."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        tls: tuple[Path, Path] | None = None,
        username: str = "admin",
        password: str = "selfheal-test-password",
        gmp_version: str = "22.6",
        scan_seconds: float = 1.0,
        final_status: str = "Done",
        hang_at: int | None = None,
        results_per_host: int = 12,
        samples: tuple[Path, ...] = DEFAULT_SAMPLES,
    ) -> None:
        if (socket_path is None) == (tls is None):
            raise ValueError("give either socket_path or tls=(certfile, keyfile)")
        self.socket_path = Path(socket_path) if socket_path is not None else None
        self.tls = tls
        self.port = 0
        self.username, self.password = username, password
        self.gmp_version = gmp_version
        self.scan_seconds = scan_seconds
        self.final_status = final_status
        self.hang_at = hang_at
        self.results_per_host = results_per_host
        self._samples = load_sample_results(samples)
        self._lock = threading.Lock()
        self.targets: dict[str, _Target] = {}
        self.tasks: dict[str, _Task] = {}
        self._busy_next = 0
        self._drop_next = 0
        self.commands: list[str] = []  # root tag of every command received
        self.requests: list[tuple[str, dict[str, str]]] = []  # (root tag, attributes) of every command
        self.connections = 0
        self._server: socketserver.BaseServer | None = None
        self._thread: threading.Thread | None = None
        self.start()

    # --- lifecycle and knobs ------------------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            return
        double = self

        class Handler(_Handler):
            gmp = double

        server: socketserver.BaseServer
        if self.tls is not None:
            server = _TlsServer(("127.0.0.1", self.port), Handler, *self.tls)
            self.port = server.server_address[1]
        else:
            assert self.socket_path is not None
            if self.socket_path.exists():
                self.socket_path.unlink()
            server = socketserver.ThreadingUnixStreamServer(str(self.socket_path), Handler)
            server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="gmp-double", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """The manager goes away: the socket file is removed (tasks and reports are kept)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None
        if self.socket_path is not None and self.socket_path.exists():
            self.socket_path.unlink()

    def close(self) -> None:
        self.stop()

    def busy_next(self, n: int) -> None:
        with self._lock:
            self._busy_next = n

    def drop_next(self, n: int) -> None:
        with self._lock:
            self._drop_next = n

    def take_drop(self) -> bool:
        with self._lock:
            self.connections += 1
            if self._drop_next > 0:
                self._drop_next -= 1
                return True
            return False

    def results_for(self, task: _Task) -> list[StdET.Element]:
        """Every result the finished scan of `task` has (before any filter)."""
        target = self.targets[task.target_id]
        out: list[StdET.Element] = []
        counter = itertools.count()
        for host in target.hosts:
            for i in range(self.results_per_host):
                res = copy.deepcopy(self._samples[i % len(self._samples)])
                self._place(res, host, PORTS[i % len(PORTS)], next(counter), task)
                out.append(res)
            low = copy.deepcopy(self._samples[0])
            self._place(low, host, "general/tcp", next(counter), task)
            low.find("qod/value").text = "30"
            low.find("severity").text = "0.0"
            low.find("threat").text = "Log"
            out.append(low)
        return out

    @staticmethod
    def _place(res: StdET.Element, host: str, port: str, n: int, task: _Task) -> None:
        res.set("id", str(uuid.uuid5(uuid.UUID(task.task_id), f"{host}/{port}/{n}")))
        host_el = res.find("host")
        if host_el is None:
            host_el = _el("host", parent=res)
        host_el.text = host
        res.find("port").text = port

    # --- task clock -----------------------------------------------------------------------------

    def _state(self, task: _Task, now: float) -> tuple[str, int]:
        """(status, progress) of a task now; progress -1 outside Running, as gvmd reports it."""
        if task.started is None:
            return task.status, -1
        if task.stopped_at is not None:
            return "Stopped", -1
        frac = (now - task.started) / self.scan_seconds if self.scan_seconds > 0 else 1.0
        if frac < 0.1:
            return "Requested", -1
        pct = min(99, max(1, int(frac * 100)))
        if self.hang_at is not None:
            return "Running", min(pct, self.hang_at)
        if frac < 1.0:
            return "Running", pct
        return self.final_status, -1

    # --- commands -----------------------------------------------------------------------------

    def command(self, cmd: StdET.Element, session: dict[str, Any]) -> bytes:
        tag = cmd.tag
        self.commands.append(tag)
        self.requests.append((tag, dict(cmd.attrib)))
        resp = f"{tag}_response"
        try:
            if tag == "get_version":
                root = _el(resp, status="200", status_text="OK")
                _el("version", self.gmp_version, root)
                return StdET.tostring(root)
            if tag == "authenticate":
                return self._authenticate(cmd, session)
            if not session.get("user"):
                raise GmpFailure("401", "Authenticate first")
            handler = getattr(self, f"_cmd_{tag}", None)
            if handler is None:
                return b'<gmp_response status="400" status_text="Bogus command name"/>'
            with self._lock:
                if self._busy_next > 0:
                    self._busy_next -= 1
                    raise GmpFailure("503", "Service temporarily down")
                answer = handler(cmd, _el(resp, status="200", status_text="OK"), time.monotonic())
                return StdET.tostring(answer)
        except GmpFailure as e:
            return StdET.tostring(_el(resp, status=e.status, status_text=e.text))

    def _authenticate(self, cmd: StdET.Element, session: dict[str, Any]) -> bytes:
        user = cmd.findtext("credentials/username") or ""
        pw = cmd.findtext("credentials/password") or ""
        if user != self.username or pw != self.password:
            session.pop("user", None)
            return b'<authenticate_response status="400" status_text="Authentication failed"/>'
        session["user"] = user
        return (
            b'<authenticate_response status="200" status_text="OK"><role>Admin</role>'
            b"<timezone>UTC</timezone><severity>nist</severity></authenticate_response>"
        )

    @staticmethod
    def _listing(root: StdET.Element, cmd: StdET.Element, items: list[tuple[str, str]], tag: str) -> None:
        keywords, _ = parse_filter(cmd.get("filter", ""))
        for oid, name in items:
            if _name_matches(name, keywords):
                el = _el(tag, parent=root, id=oid)
                _el("name", name, el)

    def _cmd_get_configs(self, cmd, root, now):
        self._listing(root, cmd, list(CONFIGS.items()), "config")
        return root

    def _cmd_get_scanners(self, cmd, root, now):
        keywords, _ = parse_filter(cmd.get("filter", ""))
        for sid, (name, stype) in SCANNERS.items():
            if _name_matches(name, keywords):
                el = _el("scanner", parent=root, id=sid)
                _el("name", name, el)
                _el("type", stype, el)
        return root

    def _cmd_get_port_lists(self, cmd, root, now):
        self._listing(root, cmd, list(PORT_LISTS.items()), "port_list")
        return root

    def _cmd_get_targets(self, cmd, root, now):
        keywords, _ = parse_filter(cmd.get("filter", ""))
        wanted = cmd.get("target_id")
        if wanted and wanted not in self.targets:
            raise GmpFailure("404", f"Failed to find target '{wanted}'")
        for t in self.targets.values():
            if (wanted and t.target_id != wanted) or not _name_matches(t.name, keywords):
                continue
            el = _el("target", parent=root, id=t.target_id)
            _el("name", t.name, el)
            _el("hosts", ", ".join(t.hosts), el)
            pl = _el("port_list", parent=el, id=t.port_list_id)
            _el("name", PORT_LISTS.get(t.port_list_id, ""), pl)
        return root

    def _cmd_create_target(self, cmd, root, now):
        name = (cmd.findtext("name") or "").strip()
        hosts = [h.strip() for h in (cmd.findtext("hosts") or "").split(",") if h.strip()]
        pl = cmd.find("port_list")
        port_list_id = pl.get("id", "") if pl is not None else ""
        if not name:
            raise GmpFailure("400", "CREATE_TARGET requires a NAME")
        if not hosts:
            raise GmpFailure("400", "CREATE_TARGET requires a host")
        if port_list_id not in PORT_LISTS:
            raise GmpFailure("404", f"Failed to find port_list '{port_list_id}'")
        if any(t.name == name for t in self.targets.values()):
            raise GmpFailure("400", "Target exists already")
        tid = str(uuid.uuid4())
        self.targets[tid] = _Target(tid, name, hosts, port_list_id)
        return _el("create_target_response", status="201", status_text="OK, resource created", id=tid)

    def _cmd_create_task(self, cmd, root, now):
        name = (cmd.findtext("name") or "").strip()
        ids = {
            k: (cmd.find(k).get("id", "") if cmd.find(k) is not None else "")
            for k in ("config", "target", "scanner")
        }
        if not name:
            raise GmpFailure("400", "CREATE_TASK requires a name attribute")
        for kind, table in (("config", CONFIGS), ("target", self.targets), ("scanner", SCANNERS)):
            if ids[kind] not in table:
                raise GmpFailure("404", f"Failed to find {kind} '{ids[kind]}'")
        tid = str(uuid.uuid4())
        self.tasks[tid] = _Task(tid, name, ids["config"], ids["target"], ids["scanner"], _now_iso())
        return _el("create_task_response", status="201", status_text="OK, resource created", id=tid)

    def _task(self, task_id: str | None) -> _Task:
        if not task_id or task_id not in self.tasks:
            raise GmpFailure("404", f"Failed to find task '{task_id or ''}'")
        return self.tasks[task_id]

    def _cmd_start_task(self, cmd, root, now):
        task = self._task(cmd.get("task_id"))
        status, _ = self._state(task, now)
        if status in ACTIVE:
            raise GmpFailure("400", "Task is active already")
        task.report_id = str(uuid.uuid4())
        task.reports.append(task.report_id)
        task.started, task.stopped_at, task.status = now, None, "Requested"
        out = _el("start_task_response", status="202", status_text="OK, request submitted")
        _el("report_id", task.report_id, out)
        return out

    def _cmd_stop_task(self, cmd, root, now):
        task = self._task(cmd.get("task_id"))
        if task.started is not None and self._state(task, now)[0] in ACTIVE:
            task.stopped_at = now
        return _el("stop_task_response", status="202", status_text="OK, request submitted")

    def _cmd_get_tasks(self, cmd, root, now):
        wanted = cmd.get("task_id")
        if wanted:
            self._task(wanted)
        keywords, _ = parse_filter(cmd.get("filter", ""))
        _el("apply_overrides", "0", root)
        shown = 0
        for task in self.tasks.values():
            if (wanted and task.task_id != wanted) or not _name_matches(task.name, keywords):
                continue
            shown += 1
            self._task_xml(task, root, now)
        filters = _el("filters", parent=root, id="")
        _el("term", cmd.get("filter", ""), filters)
        _el("tasks", parent=root, start="1", max="-1" if wanted else "10")
        count = _el("task_count", str(len(self.tasks)), root)
        _el("filtered", str(shown), count)
        _el("page", str(shown), count)
        return root

    def _task_xml(self, task: _Task, parent: StdET.Element, now: float) -> None:
        status, progress = self._state(task, now)
        target = self.targets[task.target_id]
        el = _el("task", parent=parent, id=task.task_id)
        owner = _el("owner", parent=el)
        _el("name", self.username, owner)
        _el("name", task.name, el)
        _el("comment", "", el)
        _el("creation_time", task.created, el)
        _el("modification_time", task.created, el)
        _el("writable", "1", el)
        _el("in_use", "0", el)
        _el("alterable", "0", el)
        _el("usage_type", "scan", el)
        cfg = _el("config", parent=el, id=task.config_id)
        _el("name", CONFIGS[task.config_id], cfg)
        _el("trash", "0", cfg)
        tgt = _el("target", parent=el, id=target.target_id)
        _el("name", target.name, tgt)
        _el("trash", "0", tgt)
        scn = _el("scanner", parent=el, id=task.scanner_id)
        _el("name", SCANNERS[task.scanner_id][0], scn)
        _el("type", SCANNERS[task.scanner_id][1], scn)
        _el("status", status, el)
        _el("progress", str(progress), el)
        rc = _el("report_count", str(len(task.reports)), el)
        _el("finished", str(len(task.reports) - (1 if status in ACTIVE else 0)), rc)
        if task.report_id:
            wrapper = "current_report" if status in ACTIVE else "last_report"
            rep = _el("report", parent=_el(wrapper, parent=el), id=task.report_id)
            _el("timestamp", task.created, rep)

    def _cmd_get_reports(self, cmd, root, now):
        report_id = cmd.get("report_id")
        task = next((t for t in self.tasks.values() if report_id and report_id in t.reports), None)
        if task is None:
            raise GmpFailure("404", f"Failed to find report '{report_id or ''}'")
        if cmd.get("format_id", XML_FORMAT_ID) != XML_FORMAT_ID:
            raise GmpFailure("400", "Only the XML report format is implemented by this double")
        term = cmd.get("filter", "")
        keywords, _ = parse_filter(term)

        def num(key: str, default: int) -> int:
            try:
                return int(keywords[key][1]) if key in keywords else default
            except ValueError:
                return default

        rows, first, min_qod = num("rows", 10), max(1, num("first", 1)), num("min_qod", 70)
        status, progress = self._state(task, now)
        everything = self.results_for(task)
        if status != "Done":  # a running or broken scan has only part of its results
            done = 0.0 if progress < 0 and status in ACTIVE else max(progress, 30) / 100
            everything = everything[: int(len(everything) * done)]
        passing = [r for r in everything if int(r.findtext("qod/value") or "0") >= min_qod]
        unpaged = cmd.get("ignore_pagination") == "1" or rows < 0
        paged = passing if unpaged else passing[first - 1 : first - 1 + rows]
        with_details = cmd.get("details", "1") != "0"
        page_max = -1 if cmd.get("ignore_pagination") == "1" else rows
        shown = paged if with_details else []
        root.append(
            self._report_xml(task, report_id, status, term, shown, passing, len(everything), page_max, first)
        )
        filters = _el("filters", parent=root, id="")
        _el("term", term, filters)
        _el("reports", parent=root, start="1", max="-1")
        count = _el("report_count", "1", root)
        _el("filtered", "1", count)
        _el("page", "1", count)
        return root

    def _report_xml(self, task, report_id, status, term, shown, passing, total, rows, first) -> StdET.Element:
        target = self.targets[task.target_id]
        outer = _el("report", id=report_id, format_id=XML_FORMAT_ID, extension="xml", content_type="text/xml")
        _el("name", self.username, _el("owner", parent=outer))
        _el("name", task.created, outer)
        _el("comment", "", outer)
        _el("creation_time", task.created, outer)
        _el("modification_time", _now_iso(), outer)
        _el("writable", "0", outer)
        _el("in_use", "0", outer)
        _el("name", task.name, _el("task", parent=outer, id=task.task_id))
        _el("name", "XML", _el("report_format", parent=outer, id=XML_FORMAT_ID))
        rep = _el("report", parent=outer, id=report_id)
        _el("version", self.gmp_version, _el("gmp", parent=rep))
        field_el = _el("field", "severity", _el("sort", parent=rep))
        _el("order", "descending", field_el)
        filters = _el("filters", parent=rep, id="")
        _el("term", term, filters)
        _el("scan_run_status", status, rep)
        _el("count", str(len(target.hosts)), _el("hosts", parent=rep))
        _el("count", "0", _el("closed_cves", parent=rep))
        _el("count", str(len({r.find("nvt").get("oid") for r in passing})), _el("vulns", parent=rep))
        t = _el("task", parent=rep, id=task.task_id)
        _el("name", task.name, t)
        _el("comment", "", t)
        tgt = _el("target", parent=t, id=target.target_id)
        _el("trash", "0", tgt)
        _el("name", target.name, tgt)
        _el("comment", "", tgt)
        _el("progress", "100" if status == "Done" else str(max(0, self._state(task, time.monotonic())[1])), t)
        _el("timestamp", task.created, rep)
        _el("scan_start", task.created, rep)
        _el("timezone", "Coordinated Universal Time", rep)
        _el("timezone_abbrev", "UTC", rep)
        ports = _el("ports", parent=rep, start="1", max="-1")
        by_port: dict[tuple[str, str], StdET.Element] = {}
        for r in passing:
            key = (r.findtext("port") or "", (r.find("host").text or "").strip())
            best = by_port.get(key)
            if best is None or float(r.findtext("severity") or 0) > float(best.findtext("severity") or 0):
                by_port[key] = r
        _el("count", str(len(by_port)), ports)
        for (port, host), r in sorted(by_port.items()):
            p = _el("port", port, ports)
            _el("host", host, p)
            _el("severity", r.findtext("severity") or "0.0", p)
            _el("threat", r.findtext("threat") or "Log", p)
        results = _el("results", parent=rep, start=str(first), max=str(rows))
        for r in shown:
            results.append(r)  # results_for() built fresh copies for this answer
        rc = _el("result_count", str(len(passing)), rep)
        _el("full", str(total), rc)
        _el("filtered", str(len(passing)), rc)
        for host in target.hosts:
            h = _el("host", parent=rep)
            _el("ip", host, h)
            _el("start", task.created, h)
            _el("end", _now_iso() if status == "Done" else "", h)
        errors = _el("errors", parent=rep)
        if status == "Interrupted":
            _el("count", "1", errors)
            err = _el("error", parent=errors)
            _el("host", target.hosts[0], err)
            _el("port", "", err)
            _el("description", "Scan process failure: the scanner stopped unexpectedly (openvas exited)", err)
        else:
            _el("count", "0", errors)
        _el("scan_end", _now_iso() if status == "Done" else "", rep)
        return outer


class _Handler(socketserver.BaseRequestHandler):
    """One client connection: read a command until its root element closes, answer, repeat."""

    gmp: GmpDouble

    def handle(self) -> None:
        if self.gmp.take_drop():
            return  # closed without a word: the client sees "Remote closed the connection"
        try:
            self._serve(self.request)
        finally:
            if isinstance(self.request, ssl.SSLSocket):
                with contextlib.suppress(OSError):
                    self.request.unwrap()  # answer the client's close_notify, as a TLS server should

    def _serve(self, sock: socket.socket) -> None:
        session: dict[str, Any] = {}
        while True:
            parser = StdET.XMLPullParser(events=("start", "end"))
            root_tag: str | None = None
            done: StdET.Element | None = None
            while done is None:
                data = sock.recv(65536)
                if not data:
                    return
                try:
                    parser.feed(data)
                    for event, elem in parser.read_events():
                        if event == "start" and root_tag is None:
                            root_tag = elem.tag
                        elif event == "end" and elem.tag == root_tag:
                            done = elem
                            break
                except StdET.ParseError:
                    sock.sendall(b'<gmp_response status="400" status_text="XML syntax error"/>')
                    return
            sock.sendall(self.gmp.command(done, session))
