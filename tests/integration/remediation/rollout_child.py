"""Run one patch's rollout (``selfheal.remediation.rollout.run``) in its own process, as a worker
would: the test SIGKILLs this process half way through a canary. Arguments: a JSON object on argv[1]
with ``url``, ``catalog``, ``gateway`` (settings JSON text), ``rollout`` (settings JSON text), ``patch_id``.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    args = json.loads(sys.argv[1])
    from selfheal.catalog import load_catalog
    from selfheal.policy.gate import default_gate
    from selfheal.remediation import rollout
    from selfheal.runtime import gateway_settings
    from selfheal.triage.db import make_engine

    engine = make_engine(args["url"])
    out = rollout.run(
        engine, load_catalog(args["catalog"]), args["patch_id"], gate=default_gate(),
        gw_settings=gateway_settings(args["gateway"]),
        settings=rollout.RolloutSettings.from_json(args["rollout"]),
    )
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
