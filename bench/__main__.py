"""Runner: `python -m bench NAME [NAME...]` or `python -m bench --list`.

Each benchmark module defines `main() -> dict`; the runner prints that dict as
one JSON line and also writes it to bench/results/NAME.json.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "plugins"))


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


def run(name: str) -> dict:
    if name not in available():
        raise SystemExit(f"unknown benchmark {name!r}; available: {', '.join(available())}")
    module = importlib.import_module(f"bench.{name}")
    started = time.time()
    result = module.main()
    result.setdefault("benchmark", name)
    result.setdefault("wall_s", round(time.time() - started, 3))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print("usage: python -m bench NAME [NAME...]\navailable: " + ", ".join(available()))
        return 0 if argv else 2
    for name in argv:
        print(json.dumps(run(name)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
