"""Run in a subprocess: import each DAG file with an audit hook armed and
report any I/O the file does at parse time (files other than Python modules,
sockets, subprocesses). Python's own import machinery is allowed."""

from __future__ import annotations

import importlib.util
import json
import sys

ALLOWED_SUFFIXES = (".py", ".pyc", ".so", ".pth", ".pyi", ".typed", ".json.gz")
events: list[str] = []
armed = False


def hook(event: str, args: tuple) -> None:
    if not armed:
        return
    if event == "open":
        path = str(args[0]) if args and args[0] is not None else ""
        mode = str(args[1]) if len(args) > 1 else "r"
        if isinstance(args[0], int) or path.endswith(ALLOWED_SUFFIXES) or "/__pycache__/" in path:
            return
        if path.startswith(("/dev/", "/proc/", "/sys/")) and "w" not in mode:
            return
        events.append(f"open {path} {mode}")
    elif event in ("socket.connect", "socket.getaddrinfo", "subprocess.Popen", "os.system", "os.exec"):
        events.append(f"{event} {args[:2]!r}")


def main(paths: list[str]) -> None:
    global armed
    # Warm the heavy imports first: they read their own data files, which is
    # not the DAG file's doing.
    # (TriggerDagRunOperator imports airflow-core's models, which read the serialization schema:
    # already loaded in the dag-processor that parses DAG files.)
    from airflow.providers.docker.operators.docker import DockerOperator  # noqa: F401
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator  # noqa: F401
    from airflow.sdk import DAG

    # Building one empty DAG runs Airflow's own lazy imports (croniter calls
    # `file` through platform.architecture()): Airflow's doing, not the DAG file's.
    with DAG("_warm_up", schedule="@daily"):
        pass

    sys.addaudithook(hook)
    report: dict[str, list[str]] = {}
    for p in paths:
        events.clear()
        spec = importlib.util.spec_from_file_location(f"_dag_{abs(hash(p))}", p)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        armed = True
        try:
            spec.loader.exec_module(module)
        finally:
            armed = False
        report[p] = list(events)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
