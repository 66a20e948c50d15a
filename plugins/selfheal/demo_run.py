"""`selfheal demo run`: drive the real loop once on a running `make up` and summarize it.

Everything goes through the interfaces a user has: Airflow's REST API (trigger
`selfheal_scan` for the demo target, follow the runs the findings Asset
schedules, answer the human-in-the-loop approval as a reviewer would through
`PATCH .../hitlDetails`) and the triage database for the results. Nothing is
simulated except what must be: the AWS account (moto stand-in, labelled so)
and the demo's users (a light, steady stream of ordinary requests through the
gateway, so a canary has live traffic to be judged on).

The loop is followed until it is quiet (no run active, no patch the DAG can
still take further). Then the rollback scenario: a deliberately bad code
change (GET /api/items 250 ms slower; its tests and the sandbox's /health
latency smoke test pass) is committed on its own branch and stored as a
planned patch, and a `selfheal_remediate` run takes it through the same
sandbox -> approval -> canary; the canary, judged on live traffic, must roll
it back on its own.

Stages print one line each, with their timings, as they finish; the summary
(findings by severity, exposure window, detection-to-production time, what
was patched, what was rolled back, where to look in the UI) is printed and
written as JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from selfheal import aws_standin
from selfheal.stack import StackConfig, load_state

SCAN_DAG = "selfheal_scan"
REMEDIATE_DAG = "selfheal_remediate"
TERMINAL = frozenset({"success", "failed"})
TI_DONE = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
HITL_WAITING = frozenset({"awaiting_input", "deferred"})  # Airflow 3.3 shows a HITL task as awaiting_input
# A reviewer reads the form before answering. Also what Airflow 3.3 needs: an answer within ~1-2 s of the
# task pausing races the scheduler's handling of that pause (it marks the task up_for_retry and asks again).
REVIEW_DELAY_S = 10.0
SEVERITY_ORDER = ("critical", "high", "medium", "low", "info")
UI_PAGE = "/plugin/self-healing"


class DemoError(RuntimeError):
    """The demo could not go on; the message says which stage and why."""


# ---------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DemoConfig:
    stack: StackConfig
    airflow_url: str
    airflow_home: Path
    username: str = "admin"
    scanners: tuple[str, ...] = ("wapiti", "inspector")
    timeout_s: float = 3600.0
    poll_s: float = 2.0
    traffic_rps: float | None = None  # default: the catalog's traffic_rps of the demo target, at most 30

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DemoConfig:
        env = os.environ if env is None else env
        stack = StackConfig.from_env(env)
        port = env.get("SELFHEAL_AIRFLOW_PORT") or "8080"
        home = Path(env.get("AIRFLOW_HOME") or stack.run_dir / "airflow-home")
        return cls(stack=stack, airflow_url=f"http://127.0.0.1:{port}", airflow_home=home,
                   timeout_s=float(env.get("SELFHEAL_DEMO_TIMEOUT_S") or 3600))

    @property
    def password_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"

    @property
    def summary_path(self) -> Path:
        return self.stack.run_dir / "demo-summary.json"

    def password(self) -> str:
        try:
            return str(json.loads(self.password_file.read_text())[self.username])
        except (OSError, ValueError, KeyError) as e:
            raise DemoError(f"{self.password_file}: no password for {self.username!r} ({e}); is Airflow up "
                            "(`make up`)?") from None


# ---------------------------------------------------------------------------- REST API


class AirflowAPI:
    """Airflow 3's public REST API with a JWT from /auth/token (renewed on 401)."""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 60.0) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self._auth = {"username": username, "password": password}
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout)
        self._token: str | None = None

    def close(self) -> None:
        self._client.close()

    def _login(self) -> str:
        r = self._client.post("/auth/token", json=self._auth)
        if r.status_code >= 400:
            raise DemoError(f"{self.base_url}/auth/token: HTTP {r.status_code} {r.text[:200]}")
        self._token = str(r.json()["access_token"])
        return self._token

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None,
             params: Mapping[str, Any] | None = None) -> Any:
        import httpx

        for attempt in range(2):
            token = self._token or self._login()
            try:
                r = self._client.request(method, f"/api/v2{path}", json=body, params=params,
                                         headers={"Authorization": f"Bearer {token}"})
            except httpx.HTTPError as e:
                raise DemoError(f"{method} {self.base_url}/api/v2{path}: {e}") from None
            if r.status_code == 401 and attempt == 0:
                self._token = None
                continue
            if r.status_code >= 400:
                raise DemoError(f"{method} /api/v2{path}: HTTP {r.status_code} {r.text[:300]}")
            return r.json() if r.content else {}
        raise DemoError(f"{method} /api/v2{path}: unauthorized")

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, note: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if note:
            body["note"] = note
        return self.call("POST", f"/dags/{dag_id}/dagRuns", body)

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def runs_since(self, dag_id: str, since: datetime) -> list[dict[str, Any]]:
        """Runs created since `since`, plus any still queued or running from before (a re-run of the demo
        picks up where the loop is)."""
        out = self.call("GET", f"/dags/{dag_id}/dagRuns",
                        params={"run_after_gte": since.isoformat(), "order_by": "run_after", "limit": 100})
        runs = {r["dag_run_id"]: r for r in out.get("dag_runs") or []}
        busy = self.call("GET", f"/dags/{dag_id}/dagRuns", params={"state": ["queued", "running"], "limit": 100})
        for r in busy.get("dag_runs") or []:
            runs.setdefault(r["dag_run_id"], r)
        return sorted(runs.values(), key=lambda r: str(r.get("run_after") or ""))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        out = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return list(out.get("task_instances") or [])

    def hitl_pending(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        out = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/hitlDetails")
        return [d for d in out.get("hitl_details") or [] if not d.get("response_received")]

    def hitl_respond(self, dag_id: str, run_id: str, task_id: str, map_index: int,
                     chosen: Sequence[str], params_input: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.call("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails",
                         {"chosen_options": list(chosen), "params_input": dict(params_input or {})})

    def wait_dags(self, dag_ids: Iterable[str], timeout_s: float) -> None:
        """Until the dag-processor has parsed every DAG the demo triggers (a fresh `make up`)."""
        wanted = set(dag_ids)
        deadline = time.monotonic() + timeout_s
        while True:
            have = {d["dag_id"] for d in self.call("GET", "/dags", params={"limit": 200}).get("dags", [])}
            if wanted <= have:
                return
            if time.monotonic() > deadline:
                raise DemoError(f"DAGs {sorted(wanted - have)} not loaded by Airflow after {timeout_s:g} s "
                                f"(see the dag-processor log)")
            time.sleep(2)


def ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


# ---------------------------------------------------------------------------- progress


@dataclass
class Stage:
    name: str
    seconds: float | None = None
    detail: str = ""
    ok: bool = True
    started: datetime | None = None
    ended: datetime | None = None


@dataclass
class Progress:
    """One printed line per finished stage (rich), and a spinner for the one running."""

    console: Any = None
    stages: list[Stage] = field(default_factory=list)
    _status: Any = None

    def __post_init__(self) -> None:
        if self.console is None:
            from rich.console import Console

            self.console = Console(highlight=False)

    def running(self, text: str) -> None:
        if self._status is None:
            self._status = self.console.status(text, spinner="dots")
            self._status.start()
        else:
            self._status.update(text)

    def idle(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def say(self, text: str) -> None:
        self.idle()
        self.console.print(text, soft_wrap=True)

    def done(self, stage: Stage) -> Stage:
        self.idle()
        self.stages.append(stage)
        mark = "[green]✓[/green]" if stage.ok else "[red]✗[/red]"
        secs = f"{stage.seconds:7.1f}s" if stage.seconds is not None else "      - "
        self.console.print(f"  {mark} {stage.name:<20} {secs}  {stage.detail}", soft_wrap=True)
        return stage


# ---------------------------------------------------------------------------- user traffic


class UserTraffic:
    """Ordinary requests through the gateway's front door at a steady, modest rate (the demo's users):
    a canary is judged on live traffic, and a service without users gives the judge nothing.
    The rollout tests' load client (every outcome kept, paced, bounded in time) does the sending."""

    PATHS = ("/api/items", "/api/categories", "/api/items/1", "/api/items?category=books", "/health")
    WORKERS = 4

    def __init__(self, base_url: str, rps: float, max_duration_s: float = 3600.0) -> None:
        from urllib.parse import urlsplit

        from selfheal.rollout.load import LoadClient

        u = urlsplit(base_url)
        self.rps = rps
        self._client = LoadClient(u.hostname or "127.0.0.1", u.port or 80, host_header=u.netloc, paths=self.PATHS,
                                  concurrency=self.WORKERS, interval_s=self.WORKERS / rps,
                                  max_duration_s=max_duration_s)

    @property
    def sent(self) -> int:
        return int(self._client.summary()["requests"])

    @property
    def failed(self) -> int:
        return int(self._client.summary()["server_errors"])

    def start(self) -> UserTraffic:
        self._client.start()
        return self

    def stop(self) -> None:
        self._client.stop()


# ---------------------------------------------------------------------------- following runs


def wait_run(api: AirflowAPI, dag_id: str, run_id: str, deadline: float, progress: Progress, label: str,
             on_poll: Callable[[dict[str, Any]], None] | None = None, poll_s: float = 2.0) -> dict[str, Any]:
    """Poll a DAG run until success/failed; `on_poll` sees the run each time (HITL answers go there)."""
    t0 = time.monotonic()
    while True:
        run = api.run(dag_id, run_id)
        if on_poll:
            on_poll(run)
        if run["state"] in TERMINAL:
            return run
        if time.monotonic() > deadline:
            raise DemoError(f"{dag_id} run {run_id} still {run['state']} at the demo's time limit")
        progress.running(f"{label}: {dag_id} {run['state']} ({time.monotonic() - t0:.0f}s)")
        time.sleep(poll_s)


def failed_tasks(api: AirflowAPI, dag_id: str, run_id: str) -> list[str]:
    return [f"{t['task_id']}{'' if t.get('map_index', -1) < 0 else '[' + str(t['map_index']) + ']'}"
            for t in api.task_instances(dag_id, run_id) if t.get("state") in ("failed", "upstream_failed")]


def task_span(tis: Sequence[Mapping[str, Any]], match: Callable[[str], bool]) -> tuple[datetime, datetime] | None:
    """Earliest start and latest end of the task instances `match` selects (None if none ran)."""
    spans = [(ts(t.get("start_date")), ts(t.get("end_date"))) for t in tis
             if match(str(t["task_id"])) and t.get("start_date")]
    spans = [(s, e or datetime.now(UTC)) for s, e in spans if s]
    if not spans:
        return None
    return min(s for s, _ in spans), max(e for _, e in spans)


# ---------------------------------------------------------------------------- database reads


def _rows(engine: sa.Engine, q: sa.Select) -> list[dict[str, Any]]:
    with engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(q)]


def _engine(cfg: DemoConfig) -> sa.Engine:
    from selfheal.triage.db import make_engine

    return make_engine(cfg.stack.database_url)


def scan_runs_since(engine: sa.Engine, service: str, since: datetime) -> list[dict[str, Any]]:
    from selfheal.triage.schema import scan_runs

    q = (sa.select(scan_runs).where(scan_runs.c.service == service, scan_runs.c.started_at >= since)
         .order_by(scan_runs.c.id))
    return _rows(engine, q)


def observed_findings(engine: sa.Engine, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Findings the given scan runs saw (their observations)."""
    from selfheal.triage.schema import findings, observations

    if not run_ids:
        return []
    q = (sa.select(findings).where(findings.c.id.in_(
        sa.select(observations.c.finding_id).where(observations.c.scan_run_id.in_(list(run_ids)))))
         .order_by(findings.c.id))
    return _rows(engine, q)


def observed_by_scanner(engine: sa.Engine, run_ids: Sequence[int]) -> dict[str, int]:
    """How many findings each scanner's run saw."""
    from selfheal.triage.schema import observations, scan_runs

    if not run_ids:
        return {}
    q = (sa.select(scan_runs.c.scanner, sa.func.count())
         .join(observations, observations.c.scan_run_id == scan_runs.c.id)
         .where(scan_runs.c.id.in_(list(run_ids))).group_by(scan_runs.c.scanner))
    with engine.connect() as c:
        return {str(k): int(n) for k, n in c.execute(q)}


def rules_for(engine: sa.Engine, service: str) -> list[dict[str, Any]]:
    from selfheal.gateway.state import gateway_rules

    q = sa.select(gateway_rules).where(gateway_rules.c.service == service).order_by(gateway_rules.c.updated_at)
    return _rows(engine, q)


# A classic attack string per injection class: the demo shows the gateway refusing it (a probe, not a scan).
_PROBES = {"sql": "' OR '1'='1", "xss": "<script>alert(1)</script>", "shell": "; id",
           "traversal": "../../etc/passwd"}


def probe_rule(front_door: str, rule: Mapping[str, Any]) -> tuple[str, int] | None:
    """Send the attack a block_injection rule is for through the front door; (request, HTTP status)."""
    import http.client
    from urllib.parse import quote, urlsplit

    path, param = str(rule.get("path") or ""), rule.get("param")
    if rule.get("action") != "block_injection" or not param or "{" in path or (rule.get("method") or "GET") != "GET":
        return None
    attack = _PROBES.get(str(rule.get("attack_class") or ""), "' OR '1'='1")
    target = f"{path}?{quote(str(param))}={quote(attack)}"
    u = urlsplit(front_door)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=10)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        resp.read()
        return f"GET {path}?{param}={attack}", resp.status
    except (OSError, http.client.HTTPException):
        return f"GET {path}?{param}={attack}", 0
    finally:
        conn.close()


def by_severity(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r["severity"])] = counts.get(str(r["severity"]), 0) + 1
    return {s: counts[s] for s in (*SEVERITY_ORDER, *sorted(set(counts) - set(SEVERITY_ORDER))) if s in counts}


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return round((b - a).total_seconds(), 3) if a and b else None


def exposure_windows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per mitigated/resolved finding: committed to triage (first_seen) until its virtual patch was
    applied (mitigated_at) or, without one, until it was resolved."""
    out = []
    for r in rows:
        end = r.get("mitigated_at") or r.get("resolved_at")
        if end is None:
            continue
        out.append({"finding_id": r["id"], "title": r["title"], "severity": r["severity"],
                    "first_seen": r["first_seen"], "closed_at": end,
                    "by": "virtual patch" if r.get("mitigated_at") else "resolved",
                    "seconds": _seconds(r["first_seen"], end)})
    return out


def patches_since(engine: sa.Engine, service: str, since: datetime) -> list[dict[str, Any]]:
    from selfheal.pipeline_state import patches

    q = (sa.select(patches).where(patches.c.service == service, patches.c.updated_at >= since)
         .order_by(patches.c.created_at))
    return _rows(engine, q)


def rollout_events(engine: sa.Engine, patch_ids: Sequence[str]) -> list[dict[str, Any]]:
    from selfheal.pipeline_state import rollout_events as ev

    if not patch_ids:
        return []
    q = sa.select(ev).where(ev.c.patch_id.in_(list(patch_ids))).order_by(ev.c.id)
    return _rows(engine, q)


def first_seen_of(engine: sa.Engine, finding_ids: Sequence[int]) -> datetime | None:
    from selfheal.triage.schema import findings

    ids = [int(i) for i in finding_ids if str(i).isdigit()]
    if not ids:
        return None
    with engine.connect() as c:
        return c.execute(sa.select(sa.func.min(findings.c.first_seen)).where(findings.c.id.in_(ids))).scalar()


def _stat(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3)}


def build_summary(cfg: DemoConfig, engine: sa.Engine, *, started: datetime, run_ids: Sequence[int],
                  stages: Sequence[Stage], patch_rows: Sequence[Mapping[str, Any]],
                  events: Sequence[Mapping[str, Any]], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    seen = observed_findings(engine, run_ids)
    windows = exposure_windows(seen)
    by_patch: dict[str, list[Mapping[str, Any]]] = {}
    for e in events:
        by_patch.setdefault(str(e["patch_id"]), []).append(e)
    patched, rolled_back, d2p = [], [], []
    for p in patch_rows:
        first = first_seen_of(engine, p.get("finding_ids") or [])
        evs = by_patch.get(str(p["id"]), [])
        item = {"patch_id": p["id"], "recipe": p["recipe"], "state": p["state"], "commit": p.get("commit"),
                "image": p.get("image"), "findings": p.get("finding_ids") or [], "reason": p.get("reason") or "",
                "rollout_events": len(evs)}
        if p["state"] == "promoted":
            item["detect_to_prod_s"] = _seconds(first, p["updated_at"])
            if item["detect_to_prod_s"] is not None:
                d2p.append(item["detect_to_prod_s"])
            patched.append(item)
        elif p["state"] == "rolled_back":
            rolled_back.append(item)
    ui = cfg.airflow_url
    ew = [w["seconds"] for w in windows if w["by"] == "virtual patch" and w["seconds"] is not None]
    return {
        "service": cfg.stack.service,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "stages": [{"name": s.name, "seconds": None if s.seconds is None else round(s.seconds, 2),
                    "ok": s.ok, "detail": s.detail} for s in stages],
        "scan_runs": list(run_ids),
        "findings_total": len(seen),
        "findings_by_severity": by_severity(seen),
        # The longest any finding of this run stayed exposed before its virtual patch was live.
        "exposure_window_s": max(ew) if ew else None,
        "exposure_window_stats_s": _stat(ew),
        "exposure_windows": windows,
        # The longest detection (finding committed) -> patched release taking all traffic.
        "detect_to_prod_s": max(d2p) if d2p else None,
        "detect_to_prod_stats_s": _stat(d2p),
        "patched": patched,
        "rolled_back": rolled_back,
        "ui": {"url": ui, "user": cfg.username, "password_file": str(cfg.password_file),
               "self_healing_page": f"{ui}{UI_PAGE}", "api": f"{ui}/selfheal/api/v1/",
               "dag_runs": f"{ui}/dags/{REMEDIATE_DAG}"},
        "aws": aws_standin.LABEL,
        # A re-run of the demo starts from what earlier runs left: what they promoted is live already.
        "promoted_earlier": promoted_before(engine, cfg.stack.service, started),
        **dict(extra or {}),
    }


def promoted_before(engine: sa.Engine, service: str, started: datetime) -> list[str]:
    from selfheal.pipeline_state import patches

    q = (sa.select(patches.c.id).where(patches.c.service == service, patches.c.state == "promoted",
                                       patches.c.updated_at < started).order_by(patches.c.updated_at))
    with engine.connect() as c:
        return [str(i) for i in c.execute(q).scalars()]


# ---------------------------------------------------------------------------- the demo


def scan_stage(cfg: DemoConfig, api: AirflowAPI, engine: sa.Engine, progress: Progress,
               deadline: float) -> tuple[dict[str, Any], list[int]]:
    """Trigger selfheal_scan for the demo target (Wapiti for real, Inspector2 via the stand-in)."""
    state = load_state(cfg.stack)
    moto = (state.get("moto") or {}).get("url")
    if "inspector" in cfg.scanners and moto:
        n = aws_standin.seed_inspector(moto, aws_standin.demo_findings())
        progress.say(f"  [dim]{aws_standin.LABEL}: {n} Inspector2 findings published at {moto}[/dim]")
    t0 = time.monotonic()
    since = datetime.now(UTC)
    run = api.trigger(SCAN_DAG, {"service": cfg.stack.service, "scanners": list(cfg.scanners)},
                      note="selfheal demo: scan of the demo target through the gateway")
    run = wait_run(api, SCAN_DAG, run["dag_run_id"], deadline, progress, "scan", poll_s=cfg.poll_s)
    runs = scan_runs_since(engine, cfg.stack.service, since)
    counts = observed_by_scanner(engine, [r["id"] for r in runs])
    status = {r["scanner"]: r["status"] for r in runs}  # the scan's own run last, per scanner
    per = ", ".join(f"{sc}{' (AWS stand-in)' if sc == 'inspector' else ''} "
                    f"{counts.get(sc, 0) if st == 'succeeded' else st}" for sc, st in status.items())
    seen = observed_findings(engine, [r["id"] for r in runs])
    stage = progress.done(Stage("scan", time.monotonic() - t0,
                                f"{len(seen)} findings ({per or 'no scan run recorded'}): "
                                f"{', '.join(f'{k} {v}' for k, v in by_severity(seen).items())}",
                                ok=run["state"] == "success", started=ts(run.get("start_date")),
                                ended=ts(run.get("end_date"))))
    if not stage.ok:
        failed = failed_tasks(api, SCAN_DAG, run["dag_run_id"])
        raise DemoError(f"{SCAN_DAG} run {run['dag_run_id']} failed: tasks {failed}")
    return run, [r["id"] for r in runs]


def virtual_patch_stage(cfg: DemoConfig, engine: sa.Engine, progress: Progress, run_ids: Sequence[int],
                        since: datetime) -> Stage:
    """The instant mitigations for what the scan found: gateway rules applied by the ingest itself, right
    after the findings were committed (so they are live when the scan run ends), timed from each
    finding's commit; then the attack each injection rule is for is sent through the front door."""
    seen = observed_findings(engine, run_ids)
    windows = [w for w in exposure_windows(seen) if w["by"] == "virtual patch"]
    fresh = [w for w in windows if w["first_seen"] >= since]
    fingerprints = {f["fingerprint"] for f in seen if f.get("mitigated_at")}
    rules = [r for r in rules_for(engine, cfg.stack.service) if r["finding"] in fingerprints]
    probes = [p for p in (probe_rule(cfg.stack.front_door, r) for r in rules) if p]
    blocked = [f"{req} -> {code}" for req, code in probes]
    shown = fresh or windows
    worst = max((w["seconds"] for w in shown), default=None)
    if shown:
        detail = (f"{len(fresh)} new findings mitigated by gateway rules in this run"
                  + (f" ({len(windows) - len(fresh)} earlier)" if len(windows) > len(fresh) else "")
                  + f", exposure window max {worst} s (commit -> rule live)")
    else:
        detail = "no finding of this scan needed or had a virtual patch"
    if blocked:
        detail += f"; probe {'; '.join(blocked[:3])}"
    ok = all(code == 403 for _req, code in probes)
    return progress.done(Stage("virtual patch", worst, detail, ok=ok))


# ---------------------------------------------------------------------------- following the loop


def pending_patch_ids(engine: sa.Engine, service: str) -> list[str]:
    """Patches the remediation DAG can still take further (what keeps the loop going): the DAG's own
    selection, so plans waiting for a human or already failed do not count."""
    from selfheal.remediation.planning import pending_patches
    from selfheal.remediation.store import PatchStore

    ids, _deferred, _left_out = pending_patches(engine, PatchStore(engine), 1000, services=[service])
    return ids


def patch_row(engine: sa.Engine, patch_id: str) -> dict[str, Any] | None:
    from selfheal.pipeline_state import patches

    with engine.connect() as c:
        row = c.execute(sa.select(patches).where(patches.c.id == patch_id)).first()
    return dict(row._mapping) if row else None


def _title(p: Mapping[str, Any] | None) -> str:
    if not p:
        return "?"
    plan = p.get("plan") or {}
    return f"{p['id']} {p['recipe']}: {str(plan.get('title') or '')[:70]}"


def _ti_seconds(ti: Mapping[str, Any]) -> float | None:
    if ti.get("duration") is not None:
        return float(ti["duration"])
    s, e = ts(ti.get("start_date")), ts(ti.get("end_date"))
    return (e - s).total_seconds() if s and e else None


@dataclass
class LoopFollower:
    """Follows `selfheal_remediate` runs (and the confirming rescans they request) as they happen,
    printing a line per finished stage, and answers approval requests as a reviewer would."""

    cfg: DemoConfig
    api: AirflowAPI
    engine: sa.Engine
    progress: Progress
    since: datetime
    reviewer_note: str = "approved by the demo's reviewer"
    printed: set[tuple[str, str, int]] = field(default_factory=set)
    answered: set[tuple[str, str, int, int]] = field(default_factory=set)
    runs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    policy_ids: dict[str, list[str]] = field(default_factory=dict)
    held: dict[str, list[Stage]] = field(default_factory=dict)  # triage/plan lines until policy says more
    nudges: int = 0

    # ------------------------------------------------------------------ polling
    def poll(self) -> None:
        for dag_id in (REMEDIATE_DAG, SCAN_DAG):
            runs = {r["dag_run_id"]: r for r in self.api.runs_since(dag_id, self.since)}
            for (d, run_id), known in self.runs.items():  # followed from before `since`, finished since
                if d == dag_id and run_id not in runs and known["state"] not in TERMINAL:
                    runs[run_id] = self.api.run(dag_id, run_id)
            for run in runs.values():
                key = (dag_id, run["dag_run_id"])
                old = self.runs.get(key)
                self.runs[key] = run
                if dag_id == REMEDIATE_DAG and (old is None or old["state"] not in TERMINAL):
                    self._remediate_run(run)
                elif dag_id == SCAN_DAG and run["state"] in TERMINAL and (old is None or old["state"] not in TERMINAL):
                    self._scan_done(run)

    def active(self) -> list[str]:
        return [f"{d} {r['state']}" for (d, _), r in self.runs.items() if r["state"] not in TERMINAL]

    def _once(self, run_id: str, task_id: str, map_index: int) -> bool:
        key = (run_id, task_id, map_index)
        if key in self.printed:
            return False
        self.printed.add(key)
        return True

    def _patch_of(self, run_id: str, map_index: int) -> str | None:
        ids = self.policy_ids.get(run_id)
        if ids is None:
            try:
                out = self.api.call("GET", f"/dags/{REMEDIATE_DAG}/dagRuns/{run_id}/taskInstances/policy/"
                                    "xcomEntries/return_value", params={"deserialize": True})
                value = out.get("value")
                ids = json.loads(value) if isinstance(value, str) else list(value or [])
            except (DemoError, ValueError, TypeError):
                return None
            self.policy_ids[run_id] = ids
        return ids[map_index] if 0 <= map_index < len(ids) else None

    def _remediate_run(self, run: Mapping[str, Any]) -> None:
        run_id = run["dag_run_id"]
        tis = self.api.task_instances(REMEDIATE_DAG, run_id)
        for ti in tis:
            if ti.get("state") in HITL_WAITING and ti["task_id"].endswith("approval"):
                self._answer(run_id, ti)
        for ti in sorted(tis, key=lambda t: (ts(t.get("end_date")) or datetime.max.replace(tzinfo=UTC))):
            if ti.get("state") in TI_DONE:
                self._task_done(run, ti, tis)

    def _answer(self, run_id: str, ti: Mapping[str, Any]) -> None:
        key = (run_id, ti["task_id"], int(ti.get("map_index", -1)), int(ti.get("try_number") or 0))
        if key in self.answered:
            return
        for d in self.api.hitl_pending(REMEDIATE_DAG, run_id):
            dti = d.get("task_instance") or {}
            if (dti.get("task_id"), int(dti.get("map_index", -1))) != key[1:3]:
                continue
            asked = ts(d.get("created_at"))
            if asked and (datetime.now(UTC) - asked).total_seconds() < REVIEW_DELAY_S:
                self.progress.running(f"approval requested: {d.get('subject') or ''} (the reviewer is reading it)")
                return
            options = list(d.get("options") or [])
            choice = "Approve" if "Approve" in options else (d.get("defaults") or options)[0]
            pid = self._patch_of(run_id, key[2])
            self.progress.say(f"  [yellow]?[/yellow] approval requested  {d.get('subject') or ''} "
                              f"({_title(patch_row(self.engine, pid)) if pid else key[1]})")
            self.api.hitl_respond(REMEDIATE_DAG, run_id, key[1], key[2], [choice])
            self.answered.add(key)
            self.progress.say(f"  [yellow]→[/yellow] answered '{choice}' as user {self.cfg.username} through PATCH "
                              f"/api/v2/dags/{REMEDIATE_DAG}/dagRuns/…/taskInstances/{key[1]}/{key[2]}/hitlDetails "
                              "(what a reviewer does in Required Actions)")

    def _task_done(self, run: Mapping[str, Any], ti: Mapping[str, Any], tis: Sequence[Mapping[str, Any]]) -> None:
        run_id, task, idx, state = run["dag_run_id"], str(ti["task_id"]), int(ti.get("map_index", -1)), ti["state"]
        if not self._once(run_id, task, idx):
            return
        secs = _ti_seconds(ti)
        if state in ("failed", "upstream_failed"):
            self.progress.done(Stage(task, secs, f"{REMEDIATE_DAG} {run_id}: {state}", ok=False))
            return
        pid = self._patch_of(run_id, idx) if task.startswith("patch.") else None
        p = patch_row(self.engine, pid) if pid else None
        if state == "skipped" and task == "patch.rollout" and p:
            # Admission refused it (e.g. built on a release that no longer runs) or it needs a human.
            self.progress.done(Stage("rollout", secs, f"{p['id']}: not rolled out: {str(p.get('reason'))[:200]}",
                                     ok=False))
            return
        if state != "success":
            return  # skipped: not applicable to this patch (e.g. promote after a rollback)
        held = self.held.setdefault(run_id, [])
        if task == "select_findings":
            span = task_span(tis, lambda t: t in ("mitigate", "select_findings"))
            sel = self._xcom(run_id, task) or {}
            held.append(Stage("triage", (span[1] - span[0]).total_seconds() if span else secs,
                              f"{len(sel.get('finding_ids') or [])} actionable findings selected by priority"
                              f" ({sel.get('covered', 0)} already covered by a patch)"))
        elif task == "plan":
            out = self._xcom(run_id, task) or {}
            held.append(Stage("plan", secs, f"{len(out.get('created') or [])} new patch plans, "
                              f"{out.get('existing', 0)} known, {len(out.get('needs_human') or [])} need a "
                              f"human (committed on their own branches)"))
        elif task == "policy":
            self._patch_of(run_id, 0)  # loads the run's patch ids
            ids = self.policy_ids.get(run_id) or []
            if not ids:  # a run with nothing to do (e.g. scheduled by a rescan's findings): one quiet line
                self.progress.say(f"  [dim]· {REMEDIATE_DAG} {run_id}: nothing new to patch[/dim]")
                return
            for stage in held:
                self.progress.done(stage)
            held.clear()
            names = "; ".join(_title(patch_row(self.engine, i)) for i in ids)
            self.progress.done(Stage("policy", secs, f"{len(ids)} patch(es) taken this run: {names}"))
        elif task == "patch.sandbox" and p:
            sb = p.get("sandbox") or {}
            checks = ", ".join(f"{c.get('name')} {c.get('status')}" for c in sb.get("checks") or [])
            self.progress.done(Stage("sandbox", secs, f"{_title(p)}: {'passed' if sb.get('passed') else 'FAILED'}"
                                     f" ({checks or sb.get('reason') or '-'})", ok=sb.get("passed") is True))
        elif task == "patch.approval" and p:
            appr = p.get("approval") or {}
            how = f"approved by {appr.get('by')}" if appr.get("approved") else "not needed (policy: auto)"
            self.progress.done(Stage("approval", secs, f"{p['id']}: {how}"))
        elif task == "patch.rollout" and p:
            ro = p.get("rollout") or {}
            kind = "canary" if ro.get("strategy") == "canary" else "blue/green"
            self.progress.done(Stage(kind, secs, f"{p['id']}: {ro.get('outcome')}: {str(ro.get('reason'))[:160]}",
                                     ok=ro.get("outcome") in ("promoted", "rolled_back")))
        elif task == "patch.promote" and p:
            first = first_seen_of(self.engine, p.get("finding_ids") or [])
            d2p = _seconds(first, p.get("updated_at"))
            self.progress.done(Stage("promotion", secs, f"{_title(p)} now takes 100 % of the traffic; "
                                     f"detection -> production {d2p if d2p is not None else '-'} s; "
                                     "confirming rescan requested"))
        elif task == "patch.rollback" and p:
            ro = p.get("rollout") or {}
            back = _seconds_f(ro.get("started_at"), ro.get("traffic_back_at"))
            self.progress.done(Stage("rollback", secs, f"{p['id']} rolled back automatically"
                                     + (f", traffic back on the last good release {back} s after the rollout began"
                                        if back is not None else "") + f": {str(p.get('reason'))[:160]}"))

    def _scan_done(self, run: Mapping[str, Any]) -> None:
        if not str(run["dag_run_id"]).startswith("rescan__"):
            return
        pid = str(run["dag_run_id"]).removeprefix("rescan__")
        p = patch_row(self.engine, pid) or {}
        from selfheal.triage.schema import findings

        ids = [int(i) for i in p.get("finding_ids") or []]
        with self.engine.connect() as c:
            rows = c.execute(sa.select(findings.c.status, findings.c.scanner).where(findings.c.id.in_(ids))).all()
        resolved = sum(r.status == "resolved" for r in rows)
        note = ""
        if any(r.status != "resolved" and r.scanner == "inspector" for r in rows):
            # Honest about the stand-in: real Inspector rescans a pushed image; moto serves what it was seeded with.
            note = "; Inspector findings stay open: the AWS stand-in does not rescan the new image"
        s, e = ts(run.get("start_date")), ts(run.get("end_date"))
        self.progress.done(Stage("rescan", (e - s).total_seconds() if s and e else None,
                                 f"confirming scan after {pid}: {resolved}/{len(ids)} of its findings resolved{note}",
                                 ok=run["state"] == "success"))

    def _xcom(self, run_id: str, task: str) -> Any:
        try:
            out = self.api.call("GET", f"/dags/{REMEDIATE_DAG}/dagRuns/{run_id}/taskInstances/{task}/xcomEntries/"
                                "return_value", params={"deserialize": True})
        except DemoError:
            return None
        value = out.get("value")
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    # ------------------------------------------------------------------ waiting
    def until_quiet(self, deadline: float, quiet_s: float = 20.0, max_nudges: int = 6) -> None:
        """Follow until no run is active, no patch is pending and nothing new started for `quiet_s`.

        Patches held back by the one-patch-per-service rule continue on the next run, which the
        confirming rescan's findings schedule; after a rollback there is no rescan, and the next run
        would be the hourly one: the demo triggers it at once instead (announced)."""
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            self.poll()
            active = self.active()
            pending = pending_patch_ids(self.engine, self.cfg.stack.service)
            if active:
                quiet_since = None
                self.progress.running(f"following the loop: {', '.join(active)}; pending patches {len(pending)}")
            else:
                quiet_since = quiet_since or time.monotonic()
                waited = time.monotonic() - quiet_since
                if pending and waited > 20 and self.nudges < max_nudges:
                    self.nudges += 1
                    self.progress.say(f"  [dim]{len(pending)} patch(es) still pending and no run scheduled soon: "
                                      f"triggering {REMEDIATE_DAG} now instead of waiting for its hourly run[/dim]")
                    self.api.trigger(REMEDIATE_DAG, note="selfheal demo: continue with pending patches")
                    quiet_since = None
                elif not pending and waited >= quiet_s:
                    return
                else:
                    self.progress.running(f"loop quiet for {waited:.0f}s (pending patches {len(pending)})")
            time.sleep(self.cfg.poll_s)
        raise DemoError(f"the loop was still busy at the demo's time limit ({self.cfg.timeout_s:g} s): "
                        f"{', '.join(self.active()) or 'pending patches'}")

    def follow_run(self, run_id: str, deadline: float) -> dict[str, Any]:
        while time.monotonic() < deadline:
            self.poll()
            run = self.runs.get((REMEDIATE_DAG, run_id))
            if run and run["state"] in TERMINAL:
                return run
            self.progress.running(f"following {REMEDIATE_DAG} {run_id}: {run['state'] if run else 'queued'}")
            time.sleep(self.cfg.poll_s)
        raise DemoError(f"{REMEDIATE_DAG} run {run_id} still running at the demo's time limit")


def _seconds_f(a: Any, b: Any) -> float | None:
    try:
        return round(float(b) - float(a), 2) if a is not None and b is not None else None
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------- the bad patch


BAD_DELAY_S = 0.25
BAD_MARK = "selfheal demo: deliberately bad release"


def _bad_main_py(text: str) -> str:
    """main.py with GET /api/items made BAD_DELAY_S slower (the demo's deliberately bad change)."""
    anchor = '        """All items, or the items of one category."""\n'
    if anchor not in text:
        raise DemoError("demo_api/main.py: the items() handler changed; the bad patch cannot be made")
    slow = (f"        # {BAD_MARK}: a 'live stock check' against a slow upstream, once per listing.\n"
            "        # The tests still pass and the sandbox's latency smoke test (GET /health) sees nothing;\n"
            "        # the canary, judged on live traffic, must catch it and roll it back.\n"
            f"        __import__('time').sleep({BAD_DELAY_S})\n")
    return text.replace(anchor, anchor + slow, 1)


def register_bad_patch(cfg: DemoConfig, engine: sa.Engine, started: datetime) -> str:
    """A hand-written code change that passes its tests but makes GET /api/items 250 ms slower,
    based on what runs now, committed on its own branch and stored as a planned patch: the next
    `selfheal_remediate` run verifies, asks approval for and rolls it out like any code fix."""
    from selfheal.catalog import load_catalog
    from selfheal.patches.diffs import file_diff
    from selfheal.patches.git import git
    from selfheal.patches.model import FindingRef, LatencyCheck, PatchPlan, TestsCheck, Verification, plan_id
    from selfheal.remediation.planning import store_plan
    from selfheal.remediation.rollout import RolloutSettings, live_commits
    from selfheal.remediation.store import PatchStore
    from selfheal.runtime import gateway_settings
    from selfheal.triage.schema import findings

    catalog = load_catalog(cfg.stack.catalog_file)
    svc = catalog.get(cfg.stack.service)
    live = live_commits(engine, catalog, [svc.name], gw_settings=gateway_settings(cfg.stack.settings_file.read_text()),
                        settings=RolloutSettings.from_json(cfg.stack.rollout_variable()))[svc.name]
    base = live or git(svc.repository, "rev-parse", "HEAD")
    # The policy judges a patch by its findings: the change is filed against the most urgent finding
    # still open, as a developer would ("fixes #..."); after the rollback it is reopened for a human.
    with engine.connect() as c:
        row = c.execute(sa.select(findings).where(
            findings.c.service == svc.name, findings.c.status.in_(("new", "open", "mitigated", "reopened")))
            .order_by((findings.c.kind == "web").desc(), findings.c.priority.desc().nulls_last(), findings.c.id)
            .limit(1)).first()
    if row is None:
        raise DemoError(f"no open finding of {svc.name} left to file the demo's bad patch against")
    f = row._mapping
    shown = subprocess.run(["git", "-C", svc.repository, "show", f"{base}:demo_api/main.py"],
                           capture_output=True, text=True, check=False)
    if shown.returncode != 0:
        raise DemoError(f"{svc.repository}: cannot read demo_api/main.py at {base[:12]}: {shown.stderr.strip()}")
    old = shown.stdout
    diff = file_diff("demo_api/main.py", old, _bad_main_py(old))
    ref = FindingRef(fingerprint=f["fingerprint"], rule_id=f["rule_id"], title=f["title"], severity=f["severity"],
                     kind=f["kind"], scanner=f["scanner"], db_id=int(f["id"]), cwe=f["cwe"],
                     cves=tuple(f["cves"] or ()), package=f["package_name"])
    pid = plan_id(svc.name, "code_fix", [f["fingerprint"]], base, diff, extra=f"demo-bad:{started.isoformat()}")
    plan = PatchPlan(
        id=pid, service=svc.name, recipe="code_fix", findings=(ref,),
        title=f"Live stock check on the item list (demo: deliberately adds {BAD_DELAY_S * 1000:.0f} ms)",
        description=(f"{BAD_MARK}. Filed against finding {f['id']} ({f['title']}) so policy can judge it. "
                     "Verification: the service's tests and a latency smoke test of GET /health, both of which "
                     "pass; the regression is on GET /api/items, which only live traffic exercises."),
        diff=diff, files=("demo_api/main.py",), base_commit=base,
        verification=Verification(tests=TestsCheck(svc.test_command or "pytest"), latency=LatencyCheck()),
        delivery="image",
    )
    sp, _created = store_plan(engine, PatchStore(engine), plan, svc.repository, [int(f["id"])],
                              actor="demo-developer")
    if sp.state == "failed":
        raise DemoError(f"the demo's bad patch {pid} could not be committed: {sp.record.reason}")
    return pid


def rollback_scenario(cfg: DemoConfig, api: AirflowAPI, follower: LoopFollower, engine: sa.Engine,
                      started: datetime, deadline: float) -> None:
    t0 = time.monotonic()
    pid = register_bad_patch(cfg, engine, started)
    p = patch_row(engine, pid)
    follower.progress.done(Stage("bad patch", time.monotonic() - t0,
                                 f"{_title(p)} committed on {p['branch'] if p else '?'} by 'demo-developer'"))
    run = api.trigger(REMEDIATE_DAG, note=f"selfheal demo: rollback scenario ({pid})")
    follower.follow_run(run["dag_run_id"], deadline)
    p = patch_row(engine, pid) or {}
    if p.get("state") != "rolled_back":
        raise DemoError(f"the bad patch {pid} ended {p.get('state')!r} ({p.get('reason')}), not rolled back")


def demo_traffic_rps(cfg: DemoConfig) -> float:
    from selfheal.catalog import load_catalog

    try:
        rps = load_catalog(cfg.stack.catalog_file).get(cfg.stack.service).traffic_rps
    except Exception:  # noqa: BLE001 - no run catalog yet: a modest default
        rps = 0.0
    return min(30.0, rps or 20.0)


def run_demo(cfg: DemoConfig, progress: Progress | None = None) -> tuple[dict[str, Any], Path]:
    """The whole demo; returns the summary and the path of its JSON copy."""
    progress = progress or Progress()
    started = datetime.now(UTC)
    deadline = time.monotonic() + cfg.timeout_s
    api = AirflowAPI(cfg.airflow_url, cfg.username, cfg.password())
    engine = _engine(cfg)
    traffic = UserTraffic(cfg.stack.front_door, cfg.traffic_rps or demo_traffic_rps(cfg), cfg.timeout_s + 60)
    try:
        progress.running("waiting for Airflow to load the DAGs")
        api.wait_dags([SCAN_DAG], timeout_s=180)
        traffic.start()
        progress.say(f"  [dim]demo users: ~{traffic.rps:g} requests/s of ordinary traffic through "
                     f"{cfg.stack.front_door}[/dim]")
        scan_started = datetime.now(UTC)
        _run, run_ids = scan_stage(cfg, api, engine, progress, deadline)
        virtual_patch_stage(cfg, engine, progress, run_ids, scan_started)
        follower = LoopFollower(cfg, api, engine, progress, since=started)
        follower.until_quiet(deadline)
        progress.say("  [bold]rollback scenario[/bold]: a deliberately bad patch (GET /api/items "
                     f"{BAD_DELAY_S * 1000:.0f} ms slower) goes through the same loop")
        rollback_scenario(cfg, api, follower, engine, started, deadline)
        patch_rows = patches_since(engine, cfg.stack.service, started)
        events = rollout_events(engine, [str(p["id"]) for p in patch_rows])
        summary = build_summary(cfg, engine, started=started, run_ids=run_ids, stages=progress.stages,
                                patch_rows=patch_rows, events=events,
                                extra={"user_traffic": {"sent": traffic.sent, "failed": traffic.failed}})
    finally:
        progress.idle()
        traffic.stop()
        api.close()
        engine.dispose()
    path = write_summary(cfg.summary_path, summary)
    return summary, path


def write_summary(path: Path, summary: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, path)
    return path


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def print_summary(console: Any, summary: Mapping[str, Any], path: Path, password: str | None) -> None:
    from rich.table import Table

    console.print()
    t = Table(title="selfheal demo: summary", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    sev = summary["findings_by_severity"]
    t.add_row("findings", f"{summary['findings_total']} ("
              + (", ".join(f"{k} {v}" for k, v in sev.items()) or "none") + ")")
    ew = summary.get("exposure_window_stats_s")
    n_vp = len([w for w in summary["exposure_windows"] if w["by"] == "virtual patch"])
    t.add_row("exposure window", f"{_dur(summary['exposure_window_s'])} max, median {_dur(ew['median'])} over "
              f"{n_vp} findings (committed -> virtual patch live)" if ew
              else "no finding of this run needed a virtual patch")
    d2p = summary.get("detect_to_prod_stats_s")
    # Patches of one service roll out one at a time: the fastest shows the loop, the slowest the queue.
    t.add_row("detection -> production", f"{_dur(d2p['min'])} fastest, {_dur(d2p['max'])} slowest of "
              f"{len(summary['patched'])} (finding committed -> patched release at 100 %)" if d2p else "-")
    earlier = summary.get("promoted_earlier") or []
    t.add_row("patched", "\n".join([f"{p['patch_id']} {p['recipe']} ({len(p['findings'])} findings)"
                                    for p in summary["patched"]]
                                   + ([f"(live from earlier runs: {', '.join(earlier)})"] if earlier else []))
              or "nothing")
    t.add_row("rolled back", "\n".join(f"{p['patch_id']} {p['recipe']}: {p['reason'][:120]}"
                                       for p in summary["rolled_back"]) or "nothing")
    ui = summary["ui"]
    t.add_row("Airflow UI", f"{ui['url']}  user {ui['user']}" + (f"  password {password}" if password else ""))
    t.add_row("Self-Healing page", ui["self_healing_page"])
    users = summary.get("user_traffic") or {}
    if users.get("sent"):
        t.add_row("demo users", f"{users['sent']} requests through the gateway during the demo, {users['failed']} "
                  f"failed ({100 * users['failed'] / users['sent']:.2f} %)")
    t.add_row("cloud findings", summary["aws"])
    t.add_row("summary JSON", str(path))
    console.print(t)
