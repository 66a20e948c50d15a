"""selfheal_reviewed_patch: roll out one patch a human reviewed, the same way the automatic loop does.

Trigger by hand with the form: the patch id (from the Self-Healing page or the patch's branch
`selfheal/patch-<id>`), the rollout strategy (`catalog`: what the services catalog says, or
`canary` / `blue_green`) and the confirmation box. Who triggers the run is recorded as the
approver (audit entry `approval`, and on the patch).

**accept_review** refuses, and nothing is deployed, unless the box is ticked and the deployment
admission policy allows the rollout: the sandbox passed on exactly the image that would go out,
the service's effective mode is heal, and the patch is verified or awaiting approval (a failed or
rolled-back patch must be re-planned). Then the same tasks as `selfheal_remediate`:
**prepare_rollout** (setup: traffic snapshot) → **rollout** → **analysis** → **promote** (+
confirming rescan) or **rollback**, with **guard** as teardown restoring the snapshot if the
rollout fails or is killed. The gateway's rollout lock keeps this from overlapping a rollout of
`selfheal_remediate`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from selfheal.tasks import remediate as r

with DAG(
    dag_id="selfheal_reviewed_patch",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    tags=["selfheal", "remediation", "manual"],
    doc_md=__doc__,
    default_args={"owner": "selfheal", **r.RETRIES},
    params={
        "patch_id": Param("", type="string", title="Patch id", pattern=r"^p[0-9a-f]{15}$",
                          description="The reviewed patch (p + 15 hex digits)."),
        "strategy": Param("catalog", type="string", enum=["catalog", "canary", "blue_green"], title="Strategy",
                          description="How to roll it out; 'catalog' uses the service's catalog setting."),
        "confirm": Param(False, type="boolean", title="I reviewed this patch and want it rolled out",
                         description="Nothing is deployed unless this is ticked."),
    },
) as dag:
    r.rollout_chain(r.accept_review(), None)
