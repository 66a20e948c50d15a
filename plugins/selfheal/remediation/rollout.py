"""Rolling a verified patch out through the gateway, and the guard that undoes a broken rollout.

Three steps, each safe to run again:

* ``prepare`` (the DAG's setup task): records the pre-rollout traffic
  snapshot on the patch, once. A patch whose policy says dry run (mode
  observe/mitigate) is recorded as "what would have been done" instead and
  nothing else happens.
* ``run``: under the gateway's rollout lock, admission (policy: the sandbox
  passed on this very image, approval where required, mode heal), then
  ``run_rollout`` (blue/green or canary per catalog) judged from the
  gateway's own per-request logs, collected on the gateway's log socket for
  the duration. Every event goes to ``rollout_events`` at once and every
  traffic change to the audit ledger. Re-running a finished rollout adopts
  its recorded result (nothing is deployed twice); a rollout whose process
  died half way is first put back on the snapshot.
* ``guard`` (the DAG's teardown task, runs whatever happened to the rollout
  task, SIGKILL included): unless the patch was promoted, traffic goes back
  to the recorded snapshot (if the patch's own release still takes any: a
  guard re-run later must not undo what was promoted since), the patch's
  release is retired and the patch is marked rolled back.

One rollout per gateway at a time: the log socket has one reader, and two
rollouts would judge each other's traffic. The lock is an ``flock`` on a file
in the gateway's run directory (the collector must run on the gateway's host
anyway); the kernel releases it when the holder dies, so a killed task never
leaves it taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from selfheal.audit import ledger
from selfheal.catalog import Catalog
from selfheal.gateway.config import GatewayPaths, GatewaySettings
from selfheal.gateway.runtime import GatewayUnavailable, RuntimeAPIError
from selfheal.pipeline_state import rollout_events
from selfheal.policy.gate import PolicyGate
from selfheal.remediation import finalize
from selfheal.remediation.approval import approver
from selfheal.remediation.errors import ConfigurationError, GatewayBusy, TransientError
from selfheal.remediation.store import PatchStore, StoredPatch, jsonable
from selfheal.rollout.analysis import Thresholds
from selfheal.rollout.backends.base import BackendError, TrafficSnapshot, UnhealthyRelease
from selfheal.rollout.strategies import AnalysisSettings

log = logging.getLogger(__name__)

ROLLOUT_VARIABLE = "selfheal_rollout"
LOCK_FILE = "rollout.lock"
STRATEGIES = ("canary", "blue_green")


# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class RolloutSettings:
    """Deployment-site settings (the ``selfheal_rollout`` Variable, JSON; all optional).

    ``{"docker": {DockerSettings fields}, "analysis": {AnalysisSettings fields, "thresholds":
    {Thresholds fields}}, "lock_timeout_s": 600}``
    """

    docker: Mapping[str, Any] = field(default_factory=dict)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    lock_timeout_s: float = 600.0

    @classmethod
    def from_json(cls, raw: str | None) -> RolloutSettings:
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("expected an object")
            unknown = set(data) - {"docker", "analysis", "lock_timeout_s"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            a = dict(data.get("analysis") or {})
            th = Thresholds(**a.pop("thresholds", {}))
            docker = dict(data.get("docker") or {})
            from selfheal.rollout.backends.docker import DockerSettings

            DockerSettings(**docker)  # validate the field names now, not half way through a rollout
            return cls(docker, AnalysisSettings(thresholds=th, **a), float(data.get("lock_timeout_s", 600.0)))
        except (ValueError, TypeError) as e:
            raise ConfigurationError(f"the {ROLLOUT_VARIABLE} Variable: {e}") from None


# ------------------------------------------------------------------------------------ the lock


@contextlib.contextmanager
def gateway_lock(run_dir: Path, timeout_s: float, poll_s: float = 0.2) -> Iterator[None]:
    """Exclusive rollout lock of one gateway (see the module docstring); GatewayBusy after ``timeout_s``."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise ConfigurationError(f"{path}: cannot open the gateway's rollout lock: {e.strerror}") from None
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise GatewayBusy(
                        f"gateway {run_dir}: another rollout holds {path} after {timeout_s:g}s"
                    ) from None
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ wiring


@dataclass
class Deployment:
    """The gateway, the Docker backend and (during a rollout) the log collector of one task."""

    gateway: Any
    backend: Any
    paths: GatewayPaths

    def close(self) -> None:
        self.gateway.close()


@contextlib.contextmanager
def open_deployment(
    engine: sa.Engine, catalog: Catalog, gw_settings: GatewaySettings, settings: RolloutSettings,
    client: Any = None,
) -> Iterator[Deployment]:
    from selfheal.rollout.backends.docker import DockerBackend, DockerSettings
    from selfheal.runtime import open_gateway

    if client is None:
        from selfheal.sandbox import docker_client

        try:
            client = docker_client()
        except Exception as e:
            raise TransientError(f"docker: {e}") from e
    gateway = open_gateway(engine, catalog, gw_settings)
    try:
        backend = DockerBackend.from_catalog(client, gateway, catalog, settings=DockerSettings(**settings.docker))
        dep = Deployment(gateway, backend, GatewayPaths(gw_settings.run_dir))
        yield dep
    finally:
        gateway.close()


# ------------------------------------------------------------------------------------ helpers


def snapshot_of(sp: StoredPatch) -> TrafficSnapshot | None:
    s = sp.record.rollout.get("snapshot")
    if not isinstance(s, dict):
        return None
    return TrafficSnapshot(s["service"], dict(s["weights"]), dict(s.get("details") or {}))


def _snapshot_dict(snap: TrafficSnapshot) -> dict[str, Any]:
    return jsonable({"service": snap.service, "weights": dict(snap.weights), "details": dict(snap.details),
                     "taken_at": time.time()})


def live(weights: Mapping[str, int]) -> dict[str, int]:
    return {k: int(v) for k, v in weights.items() if v}


def ours_live(dep: Deployment, service: str, patch_id: str) -> dict[str, int]:
    """The weights this patch's own release takes now ({} when none): only then is traffic the patch's
    to put back. Restoring an old snapshot when the patch takes no traffic could undo a release
    promoted since (a guard re-run days later, say)."""
    weights = live(dep.backend.current_traffic(service))
    colors = {r.color for r in dep.backend.releases(service) if r.patch_id == patch_id}
    return {c: w for c, w in weights.items() if c in colors}


def recorded_result(engine: sa.Engine, sp: StoredPatch) -> dict[str, Any] | None:
    """The rollout's outcome: on the patch, else the ``result`` event the strategy wrote at once
    (a task killed between the strategy's last step and the patch update still left it there)."""
    ro = sp.record.rollout
    if ro.get("outcome") in ("promoted", "rolled_back"):
        return {"outcome": ro["outcome"], "reason": ro.get("reason", ""), "source": "patch"}
    taken = (ro.get("snapshot") or {}).get("taken_at") or 0
    E = rollout_events
    with engine.connect() as c:
        row = c.execute(
            sa.select(E.c.detail, E.c.at)
            .where(E.c.patch_id == sp.id, E.c.kind == "result")
            .order_by(E.c.at.desc(), E.c.id.desc())
            .limit(1)
        ).first()
    if row is None or row.at.timestamp() < taken - 1:
        return None
    detail = row.detail or {}
    if detail.get("outcome") not in ("promoted", "rolled_back"):
        return None
    return {"outcome": detail["outcome"], "reason": detail.get("reason", ""), "source": "rollout_events"}


class _Recorder:
    """The strategy's ``record`` callback: each event into rollout_events, traffic moves into the ledger."""

    def __init__(self, engine: sa.Engine, patch_id: str, actor: str) -> None:
        from selfheal.rollout.events import RolloutEventStore

        self.engine, self.patch_id, self.actor = engine, patch_id, actor
        self.events = RolloutEventStore(engine, patch_id)

    def __call__(self, ev: dict[str, Any]) -> None:
        self.events(ev)
        if ev.get("event") == "traffic":
            ledger.append(
                self.engine, actor=self.actor, action="traffic_change", subject=ledger.subject("patch", self.patch_id),
                payload={"service": ev.get("service"), "strategy": ev.get("strategy"), "weights": ev.get("weights"),
                         "reason": ev.get("reason"), "applied_at": ev.get("applied_at")},
                idempotency_key=f"traffic:{self.patch_id}:{float(ev.get('applied_at') or ev.get('at') or 0):.6f}",
            )


def live_commit(dep: Deployment, service: str) -> str | None:
    """The commit the release taking most of ``service``'s traffic was built from (its image's
    ``selfheal.commit`` label, set by the sandbox and stack builds); None when unknown."""
    weights = live(dep.backend.current_traffic(service))
    if not weights:
        return None
    color = max(weights, key=lambda c: weights[c])
    rel = next((r for r in dep.backend.releases(service) if r.color == color), None)
    if rel is None or not rel.ref:
        return None
    try:
        # The image the container runs (by id), not whatever its tag points at now: tags move.
        image_id = dep.backend.client.containers.get(rel.ref).attrs["Image"]
        labels = dep.backend.client.images.get(image_id).labels or {}
    except Exception:  # noqa: BLE001 - container or image gone, docker hiccup: unknown, callers fall back
        return None
    return labels.get("selfheal.commit") or None


def live_commits(
    engine: sa.Engine, catalog: Catalog, services: list[str], *, gw_settings: GatewaySettings,
    settings: RolloutSettings, client: Any = None,
) -> dict[str, str | None]:
    """``live_commit`` for each service (None for all when the gateway cannot be reached: HEAD is used)."""
    try:
        with open_deployment(engine, catalog, gw_settings, settings, client) as dep:
            return {s: live_commit(dep, s) for s in services}
    except (TransientError, GatewayUnavailable, RuntimeAPIError, BackendError, OSError) as e:
        log.warning("live releases unknown (%s): planning against each repository's HEAD", e)
        return dict.fromkeys(services)


def _strategy(sp: StoredPatch, catalog: Catalog) -> tuple[str, tuple[int, ...]]:
    service = catalog.get(sp.service)
    chosen = sp.approval.get("strategy") or service.rollout.strategy
    if chosen not in STRATEGIES:
        chosen = service.rollout.strategy
    return chosen, tuple(service.rollout.steps)


# ------------------------------------------------------------------------------------ prepare


def prepare(
    engine: sa.Engine, catalog: Catalog, patch_id: str, *, gw_settings: GatewaySettings,
    settings: RolloutSettings, client: Any = None, store: PatchStore | None = None, actor: str = "selfheal",
) -> dict[str, Any]:
    """Record the pre-rollout snapshot (once), or the dry run. {"action": "snapshot"|"kept"|"dry_run"|"skip"}."""
    store = store or PatchStore(engine)
    sp = store.require(patch_id)
    final = sp.policy.get("final") or {}
    if sp.state in ("promoted", "rolled_back", "failed", "planned", "verifying"):
        return {"action": "skip", "reason": f"patch is {sp.state}"}
    if sp.state == "deploying" and snapshot_of(sp) is not None:
        return {"action": "kept", "reason": "rollout already under way: its snapshot stays"}
    if final.get("dry_run"):
        return _dry_run(engine, catalog, store, sp, final, actor)
    if sp.state == "awaiting_approval" and sp.approval.get("approved") is not True:
        return {"action": "skip", "reason": "waiting for approval"}
    if snapshot_of(sp) is not None:
        return {"action": "kept", "reason": "snapshot recorded by an earlier attempt"}
    with open_deployment(engine, catalog, gw_settings, settings, client) as dep:
        snap = dep.backend.snapshot(sp.service)
    with store.edit(patch_id) as cur:
        if snapshot_of(cur) is None:
            cur.record.rollout = {**cur.record.rollout, "snapshot": _snapshot_dict(snap)}
    return {"action": "snapshot", "weights": dict(snap.weights)}


def _dry_run(engine: sa.Engine, catalog: Catalog, store: PatchStore, sp: StoredPatch, final: dict[str, Any],
             actor: str) -> dict[str, Any]:
    strategy, steps = _strategy(sp, catalog)
    would = {"image": sp.record.image_tag, "strategy": strategy, "steps": list(steps),
             "mode": final.get("effective_mode"), "mode_reasons": final.get("mode_reasons") or [],
             "decision": final.get("decision"), "reasons": final.get("reasons") or []}
    with store.edit(sp.id) as cur:
        cur.record.rollout = {**cur.record.rollout, "dry_run": would}
    ledger.append(
        engine, actor=actor, action="dry_run", subject=ledger.subject("patch", sp.id),
        payload={"would": would, "finding_ids": sp.finding_ids},
        idempotency_key=f"dry_run:{sp.id}:{final.get('policy_digest', '')[:16]}:{final.get('effective_mode')}",
    )
    return {"action": "dry_run", "reason": f"mode {final.get('effective_mode')}: would roll out "
                                           f"{sp.record.image_tag} by {strategy}; no traffic touched"}


# ------------------------------------------------------------------------------------ run


def run(
    engine: sa.Engine, catalog: Catalog, patch_id: str, *, gate: PolicyGate, gw_settings: GatewaySettings,
    settings: RolloutSettings, client: Any = None, store: PatchStore | None = None, actor: str = "selfheal",
) -> dict[str, Any]:
    """Admission, then the rollout (see the module docstring). {"outcome": promoted|rolled_back|refused|skip, ...}"""
    store = store or PatchStore(engine)
    with gateway_lock(gw_settings.run_dir, settings.lock_timeout_s):
        sp = store.require(patch_id)
        if sp.state in ("promoted", "rolled_back"):
            return {"outcome": sp.state, "reason": sp.record.reason, "deployed_now": False}
        if sp.state not in ("verified", "awaiting_approval", "deploying"):
            return {"outcome": "skip", "reason": f"patch is {sp.state}", "deployed_now": False}
        if (sp.policy.get("final") or {}).get("dry_run"):
            return {"outcome": "skip", "reason": "dry run: nothing deployed", "deployed_now": False}
        try:
            with open_deployment(engine, catalog, gw_settings, settings, client) as dep:
                return _run_locked(engine, catalog, store, sp, dep, gate, settings, actor)
        except (GatewayUnavailable, RuntimeAPIError) as e:
            raise TransientError(f"patch {patch_id}: gateway: {e}") from e


def _run_locked(
    engine: sa.Engine, catalog: Catalog, store: PatchStore, sp: StoredPatch, dep: Deployment,
    gate: PolicyGate, settings: RolloutSettings, actor: str,
) -> dict[str, Any]:
    from selfheal.gateway.logs import LogCollector
    from selfheal.rollout.strategies import GatewayLogSource, run_rollout

    pid, svc = sp.id, sp.service
    service = catalog.get(svc)
    strategy, steps = _strategy(sp, catalog)
    snap = snapshot_of(sp)
    if sp.state == "deploying":
        done = recorded_result(engine, sp)
        if done is not None:
            _store_outcome(store, pid, done)
            return {**done, "deployed_now": False}
        # An earlier attempt died half way: traffic back to the snapshot first, then start over
        # (the backend's deploy is idempotent by patch id: the same container is reused).
        if snap is not None and ours_live(dep, svc, pid):
            dep.backend.restore(snap)
            _audit_restore(engine, pid, snap, actor, "an earlier rollout attempt died half way")
    else:
        adm = gate.admit(
            plan=sp.record.plan, service=service, decision=sp.decision or "approval", sandbox=sp.record.sandbox,
            rollout_image=sp.record.image_tag, strategy=strategy,
            approval={"approved": sp.approval.get("approved"), "by": sp.approval.get("by")},
        )
        reasons = list(adm.reasons)
        live_base = live_commit(dep, svc)
        base = sp.record.plan.base_commit
        if live_base and base and live_base != base:
            # Built on something that no longer runs: deploying it would undo what was promoted since.
            reasons.append(f"stale: {svc} now runs {live_base[:12]}, the patch is based on {base[:12]}")
        allow = adm.allow and not reasons
        ledger.append(
            engine, actor=actor, action="admission", subject=ledger.subject("patch", pid),
            payload={"allow": allow, "reasons": reasons, "image": sp.record.image_tag, "strategy": strategy,
                     "decision": sp.decision, "approved_by": sp.approval.get("by"), "live_commit": live_base,
                     "policy_digest": adm.policy_digest},
            idempotency_key=f"admission:{pid}:{allow}:{adm.policy_digest[:16]}:{sp.approval.get('at', '')}",
        )
        if not allow:
            why = "admission refused: " + "; ".join(reasons)
            with store.edit(pid) as cur:
                if cur.state == "verified":
                    cur.record.to("awaiting_approval", actor="selfheal:policy", reason=why)
                cur.record.rollout = {**cur.record.rollout, "admission": {"allow": False, "reasons": reasons}}
            return {"outcome": "refused", "reason": why, "deployed_now": False}
        if snap is None:  # no setup ran (e.g. called directly): take it now, before anything moves
            snap = dep.backend.snapshot(svc)
        live_now = live(dep.backend.current_traffic(svc))
        if len(live_now) > 1:
            raise TransientError(f"{svc}: traffic is split {live_now} by another rollout; its guard restores it")
        with store.edit(pid) as cur:
            cur.record.rollout = {**cur.record.rollout, "snapshot": cur.record.rollout.get("snapshot")
                                  or _snapshot_dict(snap), "strategy": strategy}
            cur.record.to("deploying", actor=approver(cur), reason=f"admitted: {strategy}")
        finalize.findings_to(engine, sp.finding_ids, "patching", actor=actor,
                             reason=f"patch {pid} rolling out ({strategy})")
    if strategy == "canary" and not live(dep.backend.current_traffic(svc)):
        strategy = "blue_green"  # a canary needs a live release to compare with
    image = sp.record.image or sp.record.image_tag or ""
    record = _Recorder(engine, pid, actor)
    collector = LogCollector(dep.paths.log_socket).start()
    try:
        if strategy == "canary":
            _prewarm(dep, service, image, pid, record)
        # Deployed by the image id the sandbox verified, not by its tag: a tag can be rebuilt meanwhile.
        result = run_rollout(
            dep.backend, GatewayLogSource(collector), svc, strategy=strategy, image=image,
            version=pid, patch_id=pid, steps=steps, analysis_settings=settings.analysis, record=record,
        )
        out = {"outcome": result.outcome, "reason": result.reason, **result.to_dict()}
    except UnhealthyRelease as e:
        # Never healthy: it took no traffic (the backend removed it). A bad patch, not a bad run.
        out = {"outcome": "rolled_back", "reason": f"release never became healthy: {e}", "strategy": strategy,
               "started_at": time.time(), "finished_at": time.time(), "traffic_back_at": time.time()}
        record({"event": "result", "outcome": "rolled_back", "reason": out["reason"], "service": svc,
                "strategy": strategy, "at": time.time()})
    except BackendError as e:
        raise TransientError(f"patch {pid}: {e} (traffic restored to the pre-rollout snapshot)") from e
    finally:
        collector.stop()
    _store_outcome(store, pid, out)
    return {"outcome": out["outcome"], "reason": out["reason"], "strategy": strategy, "deployed_now": True}


WARMUP_REQUESTS = 40


def _prewarm(dep: Deployment, service: Any, image: str, pid: str, record: _Recorder) -> None:
    """Start the canary's release and send it unjudged requests before it takes any traffic.

    A fresh process answers its first requests slowly (imports, caches, connections); judged cold
    against a warm baseline, a good release fails its first step. Blue/green has this built in
    (``pre_check_warmup``); for the canary the release is started here, in the slot the strategy
    will pick (the idle color), and the strategy's own deploy then finds it (idempotent by patch).
    """
    from selfheal.rollout.load import probe

    weights = live(dep.backend.current_traffic(service.name))
    if len(weights) != 1:
        return
    colors = ("blue", "green")
    color = colors[1] if next(iter(weights)) == colors[0] else colors[0]
    for r in dep.backend.releases(service.name):
        if r.color == color and r.patch_id != pid:
            return  # the slot holds something else: the strategy frees it as usual
    rel = dep.backend.deploy(service.name, version=pid, color=color, image=image, patch_id=pid)
    dep.backend.wait_healthy(rel, 120.0)
    if rel.endpoint:
        health = service.deploy.docker.health_path if service.deploy.docker else "/health"
        probe(rel.endpoint, ("/", health), WARMUP_REQUESTS, concurrency=2)
        record({"event": "warmup", "service": service.name, "strategy": "canary", "color": color,
                "requests": WARMUP_REQUESTS, "at": time.time()})


def _store_outcome(store: PatchStore, pid: str, out: Mapping[str, Any]) -> None:
    with store.edit(pid) as cur:
        keep = {k: cur.record.rollout[k] for k in ("snapshot", "strategy", "admission") if k in cur.record.rollout}
        cur.record.rollout = {**cur.record.rollout, **jsonable(dict(out)), **keep}


def _audit_restore(engine: sa.Engine, pid: str, snap: TrafficSnapshot, actor: str, why: str) -> None:
    ledger.append(
        engine, actor=actor, action="traffic_change", subject=ledger.subject("patch", pid),
        payload={"service": snap.service, "weights": dict(snap.weights), "reason": f"restore snapshot: {why}"},
        idempotency_key=f"traffic:{pid}:restore:{time.time():.6f}",
    )


# ------------------------------------------------------------------------------------ guard


def guard(
    engine: sa.Engine, catalog: Catalog, patch_id: str, *, gw_settings: GatewaySettings,
    settings: RolloutSettings, client: Any = None, store: PatchStore | None = None,
    actor: str = "selfheal:guard", why: str = "the rollout did not finish",
) -> dict[str, Any]:
    """Leave traffic on the last good version unless the patch was promoted (see the module docstring)."""
    store = store or PatchStore(engine)
    sp = store.get(patch_id)
    if sp is None or sp.state == "promoted":
        return {"action": "none", "reason": "promoted" if sp else "no such patch"}
    snap = snapshot_of(sp)
    if snap is None or sp.state not in ("deploying", "rolled_back"):
        # Traffic only ever moves once the patch is 'deploying' (the state is written first).
        return {"action": "none", "reason": f"patch is {sp.state}: this patch never moved traffic"}
    with gateway_lock(gw_settings.run_dir, settings.lock_timeout_s), \
            open_deployment(engine, catalog, gw_settings, settings, client) as dep:
        sp = store.require(patch_id)
        if sp.state == "deploying":
            done = recorded_result(engine, sp)
            if done is not None and done["outcome"] == "promoted":
                _store_outcome(store, patch_id, done)
                finalize.promote(engine, catalog, patch_id, gateway=dep.gateway, backend=dep.backend, store=store,
                                 actor=actor)
                return {"action": "promoted", "reason": "the rollout had promoted it; finalized by the guard"}
        restored = False
        if ours_live(dep, sp.service, patch_id):
            dep.backend.restore(snap)
            restored = True
            _audit_restore(engine, patch_id, snap, actor, why)
        # The patch's own release must not linger in a slot (it takes no traffic after the restore).
        for rel in dep.backend.releases(sp.service):
            if rel.patch_id == patch_id and rel.color not in live(snap.weights):
                with contextlib.suppress(BackendError):
                    dep.backend.retire(rel)
        if sp.state == "deploying":
            reason = f"{why}; traffic restored to the pre-rollout snapshot {live(snap.weights)}"
            done = recorded_result(engine, sp)
            if done is not None and done["outcome"] == "rolled_back":
                reason = done["reason"] or reason
            finalize.rollback(engine, catalog, patch_id, reason=reason, gateway=dep.gateway, store=store,
                              actor=actor)
        return {"action": "restored" if restored else "checked", "weights": live(dep.backend.current_traffic(
            sp.service)), "snapshot": live(snap.weights)}

