"""selfheal_remediate: from triaged findings to a verified patch in production, or back safely.

Scheduled on the `selfheal_findings` asset every scan ingest emits (no polling delay beyond the
scheduler), and hourly as well, so work left over by the batch caps is picked up without a new scan.

1. **mitigate**: catch-up for the ingest path: policy-approved virtual patches (gateway rules) for
   every open, unmitigated finding of a service in mode mitigate or heal.
2. **select_findings**: actionable findings in priority order (priority, then SLA due), at most
   `max_findings`; the rest are counted, logged and left for the next run. Each is audited as a
   detection once.
3. **plan**: patch plans (dependency upgrade, base image refresh, config hardening, code fix, or a
   manual plan naming why a human is needed), each source change committed on its own branch;
   stored by deterministic plan id, so the same findings never become a second patch.
4. **policy**: the patches this run takes (at most `max_plans`, far below Airflow's mapped-task
   limit), each judged by the OPA policy (decision and reasons audited).
5. **patch** (mapped, one group per patch): **sandbox** (build, tests, exploit replay, targeted
   rescan, latency; Docker, no network) → **approval** (Airflow HITL, only where policy wants a
   human; the form shows findings, diff, sandbox checks and policy reasons) → **prepare_rollout**
   (setup: the pre-rollout traffic snapshot; observe/mitigate modes stop here and record what
   would have been done) → **rollout** (admission policy, then blue/green or canary per catalog,
   judged on the gateway's live per-request logs) → **analysis** → **promote** (virtual patch off,
   findings patching, confirming rescan via `selfheal_scan`) or **rollback** (traffic on the last
   good version, virtual patch kept, findings reopened for a human, reason recorded) →
   **guard** (teardown: whatever happened to the rollout, SIGKILL included, traffic goes back to
   the snapshot unless the patch was promoted).

Rollouts of one gateway never overlap: `max_active_runs=1`, the rollout task has
`max_active_tis_per_dagrun=1`, and across DAGs (`selfheal_reviewed_patch`) an flock in the
gateway's run directory is held for the whole rollout (one log collector per gateway).
Transient errors (gateway busy, Docker or the database not answering) are retried with
exponential backoff; anything else fails at once. Every step is idempotent by patch id: clearing
and re-running any task never deploys twice or applies a rule twice. Every detection, decision,
approval, sandbox result, traffic change, promotion and rollback is an audit-ledger entry.

Airflow Variables: `selfheal_gateway` (gateway settings JSON, see selfheal.runtime),
`selfheal_rollout` (optional: Docker and analysis settings, see selfheal.remediation.rollout).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, task_group

from selfheal.tasks import remediate as r
from selfheal.tasks.scan import FINDINGS_ASSET

with DAG(
    dag_id="selfheal_remediate",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("23 * * * *", timezone="UTC"), assets=FINDINGS_ASSET
    ),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=30),
    tags=["selfheal", "remediation"],
    doc_md=__doc__,
    default_args={"owner": "selfheal", **r.RETRIES},
    params={
        "max_findings": Param(200, type="integer", minimum=1, maximum=10_000, title="Findings per run",
                              description="At most this many findings are planned per run (priority order)."),
        "max_plans": Param(16, type="integer", minimum=1, maximum=r.MAX_MAPPED, title="Patches per run",
                           description="At most this many patches are verified and rolled out per run."),
    },
) as dag:

    @task_group(group_id="patch")
    def patch(patch_id: str) -> None:
        verified = r.sandbox(patch_id)
        approved = r.PatchApprovalOperator(task_id="approval", patch_id=patch_id)
        verified >> approved
        r.rollout_chain(patch_id, approved)

    selected = r.select_findings()
    r.mitigate() >> selected
    patch.expand(patch_id=r.policy(r.plan(selected)))
