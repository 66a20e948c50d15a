"""Tasks of `selfheal_remediate` and `selfheal_reviewed_patch`: thin adapters over selfheal.remediation.

Every task reads what it needs from the database by patch id (XCom carries
ids and small summaries, never plans, diffs or reports), so the DAGs run the
same on any executor (CeleryExecutor with several workers included): no
task relies on a local file another task wrote. Exceptions: the sandbox and
the rollout need the Docker engine, and the rollout the gateway's Unix
sockets (runtime API, log socket): those workers must run on the gateway's
host.

Failure semantics: ``selfheal.remediation.errors.TransientError`` (gateway
busy with another rollout, Docker or the database not answering) is retried
with exponential backoff; anything else fails at once (``RETRY_POLICY``).
Steps that are not applicable to a patch (its sandbox failed, a human
rejected it, a dry run, the rollout was rolled back so there is nothing to
promote) skip themselves, and the tasks after them skip by trigger rule:
Airflow's SkipMixin-based branching does not work inside mapped task groups
(apache/airflow#67265), so nothing here relies on it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule, Variable, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from selfheal.logs import log_context

if TYPE_CHECKING:
    import sqlalchemy as sa

    from selfheal.catalog import Catalog

log = logging.getLogger(__name__)

ACTOR = "selfheal:remediate"
GATEWAY_VARIABLE = "selfheal_gateway"  # = selfheal.runtime.GATEWAY_VARIABLE (not imported: parse time)
ROLLOUT_VARIABLE = "selfheal_rollout"  # = selfheal.remediation.rollout.ROLLOUT_VARIABLE
RESCAN_DAG = "selfheal_scan"
REVIEWED_DAG = "selfheal_reviewed_patch"
APPROVAL_TIMEOUT = timedelta(hours=24)
MAX_MAPPED = 1024  # Airflow's default [core] max_map_length: a run never maps more patches

# Retry only what time can fix; the first matching rule wins, everything else fails at once.
RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=[
                "selfheal.remediation.errors.TransientError",
                "selfheal.gateway.runtime.GatewayUnavailable",
                "selfheal.gateway.runtime.RuntimeUnavailable",
                "sqlalchemy.exc.OperationalError",
                "sqlalchemy.exc.InterfaceError",
            ],
            action=RetryAction.RETRY,
            reason="transient: the gateway, Docker or the database did not answer",
        ),
    ],
    default=RetryAction.FAIL,
)
RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "retry_policy": RETRY_POLICY,
}


# ------------------------------------------------------------------------------------ plumbing


@contextlib.contextmanager
def _engine() -> Iterator[sa.Engine]:
    from selfheal.hooks.triage import TriageDbHook

    engine = TriageDbHook().get_engine()
    try:
        yield engine
    finally:
        engine.dispose()


def _catalog() -> Catalog:
    from selfheal.catalog import load_catalog

    return load_catalog()


def _gateway_settings() -> Any:
    from selfheal.remediation.errors import ConfigurationError
    from selfheal.runtime import GatewaySettingsError, gateway_settings

    try:
        return gateway_settings(Variable.get(GATEWAY_VARIABLE, default=None))
    except GatewaySettingsError as e:
        raise ConfigurationError(str(e)) from None


def _rollout_settings() -> Any:
    from selfheal.remediation.rollout import RolloutSettings

    return RolloutSettings.from_json(Variable.get(ROLLOUT_VARIABLE, default=None))


def _permanent(fn: Any) -> Any:
    """PermanentError -> AirflowFailException (no retry; the message is the reason)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from selfheal.patches.state import InvalidTransition
        from selfheal.remediation.errors import PermanentError

        try:
            return fn(*args, **kwargs)
        except (PermanentError, InvalidTransition) as e:
            raise AirflowFailException(str(e)) from e

    return wrapper


# ------------------------------------------------------------------------------------ the run


@task(**RETRIES)
@_permanent
def mitigate() -> dict[str, int]:
    """Catch-up for the inline path: policy-approved virtual patches for every open unmitigated finding."""
    from selfheal.remediation.mitigate import apply_instant_mitigations, summarize
    from selfheal.runtime import open_gateway

    catalog = _catalog()
    with _engine() as engine:
        opened: list[Any] = []

        def gateway() -> Any:
            opened.append(open_gateway(engine, catalog, _gateway_settings()))
            return opened[-1]

        try:
            results = apply_instant_mitigations(engine, gateway, catalog, None, actor=ACTOR)
        finally:
            for gw in opened:
                gw.close()
    for r in results:
        if r["outcome"] in ("applied", "failed"):
            log.log(logging.INFO if r["outcome"] == "applied" else logging.WARNING,
                    "finding %s: %s %s: %s", r["finding_id"], r["outcome"], r["rule_id"], r["reason"])
    return summarize(results)


@task(**RETRIES)
@_permanent
def select_findings(**context: Any) -> dict[str, Any]:
    """Actionable findings in priority order, at most `max_findings` (the rest: next run, logged)."""
    from datetime import UTC, datetime

    from selfheal.remediation.selection import audit_detections, select_findings

    limit = int(context["params"]["max_findings"])
    catalog = _catalog()
    with _engine() as engine:
        sel = select_findings(engine, catalog.names(), limit, now=datetime.now(UTC))
        audit_detections(engine, sel.finding_ids, ACTOR)
    log.info("selected %d findings (%d already addressed by a patch)", len(sel.finding_ids), sel.covered)
    if sel.deferred:
        log.warning("%d more actionable findings left for the next run (max_findings=%d)", sel.deferred, limit)
    if sel.sla_breached:
        log.warning("selected findings already past their SLA: %s", sel.sla_breached)
    return sel.to_dict()


@task(**RETRIES)
@_permanent
def plan(selection: dict[str, Any]) -> dict[str, Any]:
    """Patch plans for the selected findings, committed on their own branches and stored by plan id."""
    from selfheal.remediation.planning import plan_findings
    from selfheal.remediation.rollout import live_commits

    catalog = _catalog()
    with _engine() as engine:
        lives = live_commits(engine, catalog, catalog.names(), gw_settings=_gateway_settings(),
                             settings=_rollout_settings()) if selection["finding_ids"] else {}
        report = plan_findings(engine, catalog, selection["finding_ids"], actor=ACTOR, live_commits=lives)
    for e in report.errors:
        log.error("planning: %s", e)
    log.info("plans: %d new, %d known, %d need a human, %d failed, %d virtual patches left to mitigate",
             len(report.created), len(report.existing), len(report.needs_human), len(report.failed),
             report.mitigations_skipped)
    return {k: v for k, v in report.to_dict().items() if k != "existing"} | {"existing": len(report.existing)}


@task(**RETRIES)
@_permanent
def policy(planned: dict[str, Any], **context: Any) -> list[str]:
    """The patches this run works on (at most `max_plans`, highest priority first), each judged by policy."""
    from selfheal.policy.gate import MODES, default_gate
    from selfheal.remediation import decisions
    from selfheal.remediation.planning import one_per_service, pending_patches, supersede
    from selfheal.remediation.rollout import live_commits
    from selfheal.remediation.store import PatchStore

    limit = min(int(context["params"]["max_plans"]), MAX_MAPPED)
    catalog = _catalog()
    gate = default_gate()

    def mode_allows_deploy(service: str) -> bool:
        return MODES.index(gate.effective_mode(catalog.get(service)).effective_mode) >= MODES.index("heal")

    with _engine() as engine:
        store = PatchStore(engine)
        ids, deferred, left_out = pending_patches(engine, store, limit, services=catalog.names(),
                                                  mode_allows_deploy=mode_allows_deploy)
        ids, held = one_per_service(store, ids)
        lives = live_commits(engine, catalog, sorted({store.require(p).service for p in ids}),
                             gw_settings=_gateway_settings(), settings=_rollout_settings()) if ids else {}
        taken: list[str] = []
        for pid in ids:
            with log_context(patch_id=pid):
                sp = store.require(pid)
                live, base = lives.get(sp.service), sp.record.plan.base_commit
                if sp.state != "deploying" and live and base and live != base:
                    new = supersede(engine, catalog, store, pid, live, actor=ACTOR)
                    log.warning("patch %s is based on %s but %s runs %s: superseded by %s", pid, base[:12],
                                sp.service, live[:12], new or "nothing")
                    if not new:
                        continue
                    pid = new[0]
                d = decisions.decide(engine, gate, catalog, pid, "pre", store=store)
                log.info("patch %s: %s (mode %s): %s", pid, d["decision"], d["effective_mode"],
                         "; ".join(d["reasons"]))
                taken.append(pid)
    if deferred or held:
        log.warning("%d more patches wait for the next run (max_plans=%d; one patch per service per run: %s)",
                    deferred + len(held), limit, held)
    for pid, why in sorted(left_out.items()):
        log.info("patch %s not taken up: %s", pid, why)
    return taken


# ------------------------------------------------------------------------------------ per patch


@task(max_active_tis_per_dagrun=2, execution_timeout=timedelta(minutes=45), **RETRIES)
@_permanent
def sandbox(patch_id: str) -> dict[str, Any]:
    """Verify the patch in the Docker sandbox (once; a re-run keeps the stored verdict)."""
    from selfheal.remediation.verification import verify

    with log_context(patch_id=patch_id), _engine() as engine:
        out = verify(engine, _catalog(), patch_id, actor="selfheal:sandbox")
    log.info("patch %s: %s (%s)", patch_id, out["state"], out["reason"] or "all checks passed")
    return out


class PatchApprovalOperator(ApprovalOperator):
    """Airflow's ApprovalOperator, asked only when policy requires a human for this patch.

    The form (subject, body) is built at run time from the patch in the database; a patch that
    needs no human goes straight on (the decision is recorded), one that cannot be deployed
    skips. The answer and who gave it go onto the patch and into the audit ledger. Rejection is
    recorded as the patch's failure and the next step skips itself (the parent's SkipMixin
    path does not work in mapped task groups, see the module docstring).
    """

    template_fields = ("subject", "body", "patch_id")

    def __init__(self, *, patch_id: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subject", "selfheal patch approval")
        kwargs.setdefault("response_timeout", APPROVAL_TIMEOUT)
        super().__init__(**kwargs)
        self.patch_id = patch_id

    def execute(self, context: Any) -> Any:
        from selfheal.policy.gate import default_gate
        from selfheal.remediation import approval

        with log_context(patch_id=self.patch_id), _engine() as engine:
            step = approval.prepare(engine, default_gate(), _catalog(), self.patch_id)
        self.log.info("patch %s: %s: %s", self.patch_id, step.action, step.reason)
        if step.action == "skip":
            raise AirflowSkipException(step.reason)
        if step.action == "pass":
            return step.to_dict()
        self.subject, self.body = step.subject, step.body
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from selfheal.remediation import approval

        if event.get("error_type") == "timeout" or event.get("timedout"):
            raise AirflowSkipException(
                f"patch {self.patch_id}: no answer within {self.response_timeout}; it stays awaiting approval "
                "(roll it out with selfheal_reviewed_patch once reviewed)"
            )
        ret = HITLOperator.execute_complete(self, context, event)  # validation, not the parent's skip
        chosen = ret["chosen_options"][0]
        user = ret.get("responded_by_user") or {}
        by = str(user.get("name") or user.get("id") or "unknown")
        with log_context(patch_id=self.patch_id), _engine() as engine:
            out = approval.record_response(
                engine, self.patch_id, approved=chosen == self.APPROVE, by=by, at=ret.get("responded_at"),
                via=f"hitl:{context['dag_run'].dag_id}",
            )
        self.log.info("patch %s: %s by %s (%s)", self.patch_id, chosen, by, out)
        return {"action": "approved" if chosen == self.APPROVE else "rejected", "by": by, **out}


@task(**RETRIES)
@_permanent
def prepare_rollout(patch_id: str) -> dict[str, Any]:
    """Setup: record the pre-rollout traffic snapshot the guard restores (or report a dry run)."""
    from selfheal.remediation import rollout

    with log_context(patch_id=patch_id), _engine() as engine:
        out = rollout.prepare(engine, _catalog(), patch_id, gw_settings=_gateway_settings(),
                              settings=_rollout_settings(), actor=ACTOR)
    if out["action"] in ("skip", "dry_run"):
        raise AirflowSkipException(f"patch {patch_id}: {out['reason']}")
    return out


@task(max_active_tis_per_dagrun=1, execution_timeout=timedelta(minutes=30), **RETRIES)
@_permanent
def rollout(patch_id: str, **context: Any) -> dict[str, Any]:
    """Admission, then blue/green or canary through the gateway, judged on live traffic (one at a time).

    A refused admission skips the rest in the automatic loop (the patch waits for a human); in a
    human's reviewed run it fails the run, so the refusal is seen."""
    from selfheal.policy.gate import default_gate
    from selfheal.remediation import rollout as core

    with log_context(patch_id=patch_id), _engine() as engine:
        out = core.run(engine, _catalog(), patch_id, gate=default_gate(), gw_settings=_gateway_settings(),
                       settings=_rollout_settings(), actor=ACTOR)
    log.info("patch %s: %s: %s", patch_id, out["outcome"], out.get("reason", ""))
    if out["outcome"] == "refused" and context["dag"].dag_id == REVIEWED_DAG:
        raise AirflowFailException(f"patch {patch_id}: {out['reason']}")
    if out["outcome"] in ("refused", "skip"):
        raise AirflowSkipException(f"patch {patch_id}: {out['reason']}")
    return {k: out[k] for k in ("outcome", "reason", "deployed_now") if k in out}


@task(**RETRIES)
@_permanent
def analysis(patch_id: str) -> dict[str, Any]:
    """The rollout's verdict, recorded: which way the patch goes (promote or roll back)."""
    from selfheal.audit import ledger
    from selfheal.remediation.store import PatchStore

    with log_context(patch_id=patch_id), _engine() as engine:
        sp = PatchStore(engine).require(patch_id)
        ro = sp.record.rollout
        outcome = ro.get("outcome") or sp.state
        verdicts = [v for v in ro.get("verdicts") or [] if v.get("decision")]
        summary = {
            "outcome": outcome, "reason": ro.get("reason") or sp.record.reason, "strategy": ro.get("strategy"),
            "decisions": [{"phase": v.get("phase"), "step": v.get("step"), "verdict": v.get("verdict"),
                           "decision": v.get("decision")} for v in verdicts][-10:],
        }
        ledger.append(engine, actor=ACTOR, action="analysis", subject=ledger.subject("patch", patch_id),
                      payload=summary, idempotency_key=f"analysis:{patch_id}:{outcome}")
    if outcome not in ("promoted", "rolled_back"):
        raise AirflowFailException(f"patch {patch_id}: no rollout result recorded (state {sp.state})")
    return {"outcome": outcome, "reason": summary["reason"]}


@task(multiple_outputs=True, **RETRIES)
@_permanent
def promote(patch_id: str) -> dict[str, Any]:
    """Promoted: virtual patches off, findings patching, release recorded; asks for a confirming rescan."""
    from selfheal.remediation import finalize
    from selfheal.remediation.rollout import open_deployment
    from selfheal.remediation.store import PatchStore

    catalog = _catalog()
    with log_context(patch_id=patch_id), _engine() as engine:
        sp = PatchStore(engine).require(patch_id)
        if sp.state != "promoted" and sp.record.rollout.get("outcome") != "promoted":
            raise AirflowSkipException(f"patch {patch_id}: not promoted ({sp.record.rollout.get('outcome')})")
        with open_deployment(engine, catalog, _gateway_settings(), _rollout_settings()) as dep:
            request = finalize.promote(engine, catalog, patch_id, gateway=dep.gateway, backend=dep.backend,
                                       actor=ACTOR)
    if request is None:
        raise AirflowSkipException(f"patch {patch_id}: nothing to promote")
    return request


@task(**RETRIES)
@_permanent
def rollback(patch_id: str) -> dict[str, Any]:
    """Rolled back: traffic checked on the snapshot, virtual patch kept, findings reopened for a human."""
    from selfheal.remediation import rollout as core
    from selfheal.remediation.store import PatchStore

    with log_context(patch_id=patch_id), _engine() as engine:
        sp = PatchStore(engine).require(patch_id)
        if sp.record.rollout.get("outcome") != "rolled_back" and sp.state != "rolled_back":
            raise AirflowSkipException(f"patch {patch_id}: not rolled back")
        out = core.guard(engine, _catalog(), patch_id, gw_settings=_gateway_settings(),
                         settings=_rollout_settings(), actor=ACTOR,
                         why=str(sp.record.rollout.get("reason") or "rolled back"))
    return out


def request_rescan(promoted: Any) -> TriggerDagRunOperator:
    """The confirming rescan of the patched service (one `selfheal_scan` run per patch: idempotent)."""
    return TriggerDagRunOperator(
        task_id="request_rescan",
        trigger_dag_id=RESCAN_DAG,
        trigger_run_id=promoted["run_id"],
        conf=promoted["conf"],
        skip_when_already_exists=True,
        retries=2,
    )


@task(**RETRIES)
@_permanent
def guard(patch_id: str) -> dict[str, Any]:
    """Teardown: unless the patch was promoted, traffic back on the pre-rollout snapshot (any failure,
    a killed task included) and the patch rolled back."""
    from selfheal.remediation import rollout as core

    with log_context(patch_id=patch_id), _engine() as engine:
        out = core.guard(engine, _catalog(), patch_id, gw_settings=_gateway_settings(),
                         settings=_rollout_settings(), actor="selfheal:guard",
                         why="the rollout did not finish (task failed or killed)")
    log.info("patch %s guard: %s", patch_id, out)
    return out


def rollout_chain(patch_id: Any, upstream: Any = None) -> None:
    """prepare (setup) -> rollout -> analysis -> promote | rollback (-> rescan), guard as teardown.

    Shared by both DAGs so a reviewed patch goes out exactly like an automatic one.
    """
    setup = prepare_rollout(patch_id)
    done = rollout(patch_id)
    verdict = analysis(patch_id)
    promoted = promote(patch_id)
    rolled_back = rollback(patch_id)
    rescan = request_rescan(promoted)
    if upstream is not None:
        upstream >> setup
    setup >> done >> verdict >> [promoted, rolled_back]
    promoted >> rescan
    [rolled_back, rescan] >> guard(patch_id).as_teardown(setups=setup)


# ------------------------------------------------------------------------------------ reviewed patch


@task(retries=0)
@_permanent
def accept_review(**context: Any) -> str:
    """A human's reviewed go-ahead for one patch: refused unless confirmed and admissible (sandbox passed)."""
    from selfheal.policy.gate import default_gate
    from selfheal.remediation import approval, decisions
    from selfheal.remediation.rollout import live_commits
    from selfheal.remediation.store import PatchStore

    params = context["params"]
    patch_id = str(params["patch_id"]).strip()
    if params.get("confirm") is not True:
        raise AirflowFailException(f"patch {patch_id}: 'confirm' is not set; nothing was deployed")
    user = getattr(context["dag_run"], "triggering_user_name", None) or "unknown"
    strategy = None if params.get("strategy") in (None, "", "catalog") else str(params["strategy"])
    catalog = _catalog()
    gate = default_gate()
    with log_context(patch_id=patch_id), _engine() as engine:
        store = PatchStore(engine)
        sp = store.require(patch_id)
        if sp.state == "deploying":
            return patch_id  # a rollout was interrupted: the chain recovers or adopts it
        if sp.state not in ("verified", "awaiting_approval"):
            raise AirflowFailException(f"patch {patch_id}: is {sp.state} ({sp.record.reason}); only a verified "
                                       "patch can be rolled out (re-plan a failed or rolled back one)")
        final = decisions.decide(engine, gate, catalog, patch_id, "final", store=store)
        adm = gate.admit(plan=sp.record.plan, service=catalog.get(sp.service), decision=final["decision"],
                         sandbox=sp.record.sandbox, rollout_image=sp.record.image_tag, strategy=strategy,
                         approval={"approved": True, "by": user})
        reasons = list(adm.reasons)
        live = live_commits(engine, catalog, [sp.service], gw_settings=_gateway_settings(),
                            settings=_rollout_settings()).get(sp.service)
        if live and sp.record.plan.base_commit and live != sp.record.plan.base_commit:
            reasons.append(f"stale: {sp.service} now runs {live[:12]}, the patch is based on "
                           f"{sp.record.plan.base_commit[:12]} (re-plan it)")
        if not adm.allow or reasons:
            raise AirflowFailException(f"patch {patch_id}: admission refused: " + "; ".join(reasons))
        approval.record_response(engine, patch_id, approved=True, by=user, via="selfheal_reviewed_patch",
                                 strategy=strategy)
    return patch_id
