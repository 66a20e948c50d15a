"""``python -m selfheal.sandbox``: verify one patch, or remove stale sandboxes, from a shell.

    python -m selfheal.sandbox verify --plan plan.json --repo REPO --commit SHA [--service NAME]
    python -m selfheal.sandbox cleanup [--max-age SECONDS]

``verify`` prints the VerificationResult as JSON on stdout (exit 0 if it
passed, 1 if not) and one line per stage on stderr. This is also how a
DockerOperator-less deployment, or a test, runs a verification in its own
process. The Docker daemon is the one DOCKER_HOST names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfheal.sandbox")
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="build and verify one patch commit")
    v.add_argument("--plan", required=True, type=Path, help="PatchPlan JSON (PatchPlan.to_json())")
    v.add_argument("--repo", required=True, help="the service's git repository")
    v.add_argument("--commit", required=True, help="the patch commit (or branch)")
    v.add_argument("--baseline-commit", help="unpatched commit (default: the plan's base_commit)")
    v.add_argument("--service", help="catalog service name (Dockerfile, port, health path, tests)")
    v.add_argument("--catalog", type=Path, help="services catalog (default: include/services.yaml)")
    c = sub.add_parser("cleanup", help="remove sandboxes whose owner is gone or that are too old")
    c.add_argument("--max-age", type=float, default=3600.0)
    args = parser.parse_args(argv)

    from selfheal.sandbox.errors import SandboxError
    from selfheal.sandbox.isolation import cleanup_stale
    from selfheal.sandbox.verify import docker_client, verify_patch

    if args.cmd == "cleanup":
        try:
            removed = cleanup_stale(docker_client(), args.max_age)
        except SandboxError as e:
            print(f"selfheal sandbox cleanup: {e}", file=sys.stderr)
            return 2
        print(json.dumps(removed))
        return 0

    try:
        plan = json.loads(args.plan.read_text())
    except (OSError, ValueError) as e:
        print(f"{args.plan}: cannot read the plan: {e}", file=sys.stderr)
        return 2
    service = None
    if args.service:
        from selfheal.catalog import load_catalog

        service = load_catalog(args.catalog).get(args.service)

    def progress(stage: str) -> None:
        print(f"selfheal-sandbox: {stage}", file=sys.stderr, flush=True)

    result = verify_patch(plan, repo=args.repo, commit=args.commit, baseline_commit=args.baseline_commit,
                          service=service, progress=progress)
    print(result.to_json(), flush=True)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
