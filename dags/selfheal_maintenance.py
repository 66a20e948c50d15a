"""selfheal_maintenance: the daily housekeeping of the self-healing loop.

* **refresh_kev / refresh_epss**: CISA's KEV catalog and FIRST's EPSS scores
  from the URLs in the Variables `selfheal_kev_url` / `selfheal_epss_url`
  (default: the public feeds). A feed that cannot be fetched or read fails
  its task with the reason and leaves the stored data as it was; network
  errors are retried with exponential backoff, a wrong format is not.
* **reprioritize**: every active finding re-scored (CVSS, EPSS, KEV, tier,
  SSVC, SLA clock), even when a feed was down: yesterday's intel still holds.
* **report_sla_breaches**: findings past their SLA due date and not resolved,
  accepted or false positive: counts by severity and the worst N (param
  `worst_n`) in the log and the XCom.
* **verify_audit**: walks the whole audit hash chain and fails naming where it
  breaks; the head recorded by the last good run (Variable
  `selfheal_audit_anchor`) must still be there, so a cut-off tail is caught too.
  A broken chain fails every run until someone investigates: it cannot be repaired.
* **cleanup_sandboxes / cleanup_old_releases**: stale sandbox containers and
  networks (label `selfheal.sandbox`; dead owner, past deadline or older than
  `sandbox_max_age_s`) and retired Docker releases past their rollback window
  (Variable `selfheal_release_keep_s`, default the rollout's `keep_old_s`).
  Only objects carrying selfheal's labels are ever touched.
* **record_run**: one audit entry per run summarizing all of the above (no
  secrets: feed URLs lose credentials and query strings); **watcher** fails the
  run when any task failed.

Everything is idempotent: clear and re-run any task at will.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from selfheal.tasks import maintenance as m

with DAG(
    dag_id="selfheal_maintenance",
    schedule="@daily",
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=3),
    tags=["selfheal", "maintenance", "audit"],
    doc_md=__doc__,
    default_args={
        "owner": "selfheal",
        "retries": 1,
        "retry_delay": timedelta(minutes=1),
        "retry_policy": m.RETRY_POLICY,
        "execution_timeout": timedelta(hours=1),
    },
    params={
        "worst_n": Param(10, type="integer", minimum=1, maximum=200, title="Worst breaches listed",
                         description="How many SLA breaches (highest priority first) the report names."),
        "sandbox_max_age_s": Param(
            3600, type="integer", minimum=60, title="Sandbox max age (s)",
            description="A sandbox older than this is removed even if its owner lives.",
        ),
    },
) as dag:
    kev, epss = m.refresh_kev(), m.refresh_epss()
    prioritized = m.reprioritize()
    sla = m.report_sla_breaches()
    [kev, epss] >> prioritized >> sla
    work = [kev, epss, prioritized, sla, m.verify_audit(), m.cleanup_sandboxes(), m.cleanup_old_releases()]
    work >> m.record_run()
    work >> m.watcher()
