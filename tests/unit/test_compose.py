"""docker-compose.yaml: what can be checked on a machine where no image can be pulled.

* it validates: ``docker-compose config`` (Debian's docker-compose, installed by
  scripts/bootstrap.sh) interpolates it with .env.example and checks it against
  the Compose schema;
* every file it points at exists: build contexts and their Dockerfiles, bind
  mounts, and the container paths commands use under those mounts;
* every service's environment is complete: each ``${VAR}`` has a default or is
  in .env.example, each Airflow connection and Variable the code reads is set;
* the wiring is consistent: CeleryExecutor, Redis broker, Postgres metadata DB
  and result backend, triage DB and its init script, JWT secret everywhere,
  the gateway settings shared by HAProxy's starter and the tasks;
* Prometheus scrapes the plugin's metrics path on the API server (with the
  bearer token when set), Grafana gets that datasource and a dashboard that
  uses only exported metric names.

Each check is a function returning a list of problems; the tests at the end run
them on deliberately broken copies, so none of them can pass vacuously.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from selfheal.web.metrics import exported_names

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"

# Components of Airflow's official compose file, by their command.
AIRFLOW_COMMANDS = {"api-server", "scheduler", "dag-processor", "triggerer", "celery worker"}
# Must be the same in every Airflow container (JWTs, sessions, DBs, broker).
SHARED_AIRFLOW_ENV = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
)
# Variables the code reads that the stack must NOT set, or need not: why, for each.
VARIABLES_NOT_SET = {
    # Written by selfheal_maintenance (Variable.set); an AIRFLOW_VAR_ would shadow what it stores.
    "selfheal_audit_anchor": "forbidden",
    # Optional knobs whose defaults live in the code (feeds' public URLs, release retention).
    "selfheal_kev_url": "default",
    "selfheal_epss_url": "default",
    "selfheal_release_keep_s": "default",
}
# Connections the code can read that this stack does not need, and the condition that makes it so.
CONNECTIONS_NOT_SET = {"kubernetes_default": "no catalog service is deployed with kind kubernetes"}

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
_DOLLAR = re.compile(r"\$(\$|\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*|)")


# ----------------------------------------------------------------------------------- the stack


def parse_env_file(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            out[key.strip()] = value
    return out


def interpolate(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Compose's interpolation for the forms this file uses; problems for the rest and unset variables."""
    problems: list[str] = []

    def one(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "$$":
            return "$"
        v = _VAR.fullmatch(token)
        if v is None:
            problems.append(
                f"{token!r}: write variables as ${{NAME}}, ${{NAME:-default}} or ${{NAME:?message}}"
            )
            return token
        name, op, arg = v.group("name"), v.group("op"), v.group("arg")
        value = env.get(name)
        if op in (":-", "-"):
            return arg if (value is None or (op == ":-" and value == "")) else value
        if value is None or (op == ":?" and value == ""):
            problems.append(f"${{{name}}} has no default and is not set in .env.example")
            return ""
        return value

    return _DOLLAR.sub(one, text), problems


@dataclass(frozen=True)
class Stack:
    """The compose file and everything it refers to, as text: tests break copies of it."""

    compose_text: str
    env_example: str
    prometheus_text: str
    dashboard_text: str
    root: Path = REPO

    @classmethod
    def load(cls) -> Stack:
        return cls(
            compose_text=(REPO / "docker-compose.yaml").read_text(),
            env_example=(REPO / ".env.example").read_text(),
            prometheus_text=(REPO / "include" / "prometheus" / "prometheus.yml").read_text(),
            dashboard_text=(REPO / "include" / "grafana" / "selfheal-dashboard.json").read_text(),
        )

    @cached_property
    def env(self) -> dict[str, str]:
        return parse_env_file(self.env_example)

    @cached_property
    def raw(self) -> dict[str, Any]:
        """Anchors and merge keys resolved by YAML, variables not interpolated."""
        return yaml.safe_load(self.compose_text)

    @cached_property
    def doc(self) -> dict[str, Any]:
        text, _ = interpolate(self.compose_text, self.env)
        return yaml.safe_load(text)

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return self.doc["services"]

    def environment(self, service: str) -> dict[str, str]:
        env = self.services[service].get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        return {k: "" if v is None else str(v) for k, v in env.items()}

    def command(self, service: str) -> str:
        c = self.services[service].get("command", "")
        return " ".join(c) if isinstance(c, list) else str(c)

    def airflow_services(self) -> dict[str, str]:
        """{service: command} of the Airflow components."""
        return {n: self.command(n) for n in self.services if self.command(n) in AIRFLOW_COMMANDS}

    def mounts(self, service: str) -> list[tuple[str, str]]:
        """(source, container path) of each volume; a source starting with . or / is a bind mount."""
        out = []
        for v in self.services[service].get("volumes", []):
            if isinstance(v, dict):
                out.append((str(v.get("source", "")), str(v["target"])))
            else:
                parts = v.split(":")
                out.append((parts[0], parts[1]))
        return out

    def host_path(self, service: str, container_path: str) -> Path | None:
        """Where a container path of ``service`` comes from on the host, through its bind mounts."""
        best: tuple[int, Path] | None = None
        p = PurePosixPath(container_path)
        for src, target in self.mounts(service):
            if not src.startswith((".", "/")):
                continue
            t = PurePosixPath(target)
            if (p == t or t in p.parents) and (best is None or len(t.parts) > best[0]):
                best = (len(t.parts), (self.root / src).resolve() / p.relative_to(t))
        return best[1] if best else None


@pytest.fixture(scope="module")
def stack() -> Stack:
    return Stack.load()


# ------------------------------------------------------------------------------------ checks


def check_files(s: Stack) -> list[str]:
    problems = []
    for name, svc in s.services.items():
        build = svc.get("build")
        if build:
            ctx = s.root / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = ctx / (
                build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            )
            if not ctx.is_dir():
                problems.append(f"{name}: build context {ctx} does not exist")
            elif not dockerfile.is_file():
                problems.append(f"{name}: {dockerfile} does not exist")
        for ef in svc.get("env_file", []) or []:
            if not (s.root / ef).is_file():
                problems.append(f"{name}: env_file {ef} does not exist")
        for src, target in s.mounts(name):
            if src.startswith(".") and not (s.root / src).exists():
                problems.append(f"{name}: bind mount source {src} (-> {target}) does not exist")
        # Paths the service's command, healthcheck and environment name under its bind mounts.
        texts = [
            s.command(name),
            json.dumps(svc.get("entrypoint", "")),
            json.dumps(svc.get("healthcheck", {})),
            *s.environment(name).values(),
        ]
        for text in texts:
            for path in re.findall(r"(?<![\w.])(/(?:opt|etc|var/lib)/[\w./-]+)", text):
                host = s.host_path(name, path.rstrip("."))
                if host is not None and not host.exists():
                    problems.append(f"{name}: {path} -> {host} does not exist")
    return problems


def check_environment(s: Stack) -> list[str]:
    _, problems = interpolate(s.compose_text, s.env)
    used = {m.group("name") for m in _VAR.finditer(s.compose_text)}
    problems += [f".env.example: {k} is not used by docker-compose.yaml" for k in sorted(set(s.env) - used)]
    for name, svc in s.raw["services"].items():  # as written: an empty value is a forgotten one
        for key, value in (svc.get("environment") or {}).items():
            if value is None:
                problems.append(f"{name}: environment {key} has no value")
    return problems


def _string_constants() -> dict[str, str]:
    out = {}
    for f in PLUGINS.rglob("*.py"):
        for m in re.finditer(
            r'^\s*([A-Z][A-Z0-9_]*)\s*(?::\s*str)?\s*=\s*"([a-z][a-z0-9_]*)"', f.read_text(), re.M
        ):
            out[m.group(1)] = m.group(2)
    return out


def code_variables() -> set[str]:
    """Airflow Variables the package and the DAGs read."""
    consts = _string_constants()
    names = set()
    for f in [*PLUGINS.rglob("*.py"), *(REPO / "dags").glob("*.py")]:
        text = f.read_text()
        for arg in re.findall(r"Variable\.get\(\s*([^,)\s]+)", text):
            names.add(
                arg.strip("\"'") if arg[0] in "\"'" else consts.get(arg, f"<unresolved {arg} in {f.name}>")
            )
        names |= set(re.findall(r"var\.(?:value|json)\.get\(\s*['\"]([\w]+)", text))
        names |= set(re.findall(r"var\.(?:value|json)\.(?!get\b)(\w+)", text))
    return names


def code_connections() -> set[str]:
    """Connection ids the package reads by default."""
    ids = set()
    for f in PLUGINS.rglob("*.py"):
        text = f.read_text()
        ids |= set(re.findall(r'default_conn_name\s*=\s*"([\w-]+)"', text))
        ids |= set(re.findall(r'conn_id(?:\s*:\s*str(?:\s*\|\s*None)?)?\s*=\s*"([\w-]+)"', text))
        if "AwsBaseHook.default_conn_name" in text:
            ids.add("aws_default")
    return ids


def check_connections_and_variables(s: Stack) -> list[str]:
    problems = []
    from selfheal.catalog import load_catalog
    from selfheal.gateway.config import render_config
    from selfheal.runtime import gateway_settings

    for name in s.airflow_services():
        env = s.environment(name)
        for conn in sorted(code_connections()):
            key = f"AIRFLOW_CONN_{conn.upper()}"
            if conn in CONNECTIONS_NOT_SET:
                if key in env:
                    problems.append(f"{name}: {key} set, but the stack does not use {conn}")
            elif key not in env:
                problems.append(f"{name}: connection {conn} (read by the code) is not set: add {key}")
        for var in sorted(code_variables()):
            key = f"AIRFLOW_VAR_{var.upper()}"
            why = VARIABLES_NOT_SET.get(var)
            if why == "forbidden" and key in env:
                problems.append(f"{name}: {key} must not be set (the pipeline writes that Variable)")
            elif why is None and key not in env:
                problems.append(f"{name}: Variable {var} (read by the code) is not set: add {key}")
        catalog_path = s.host_path(name, env.get("SELFHEAL_CATALOG", ""))
        if catalog_path is None or not catalog_path.is_file():
            problems.append(f"{name}: SELFHEAL_CATALOG {env.get('SELFHEAL_CATALOG')!r} is not a mounted file")
            continue
        catalog = load_catalog(catalog_path)
        if any(svc.deploy.kind == "kubernetes" for svc in catalog.services):
            problems.append(f"{name}: the catalog deploys on Kubernetes but kubernetes_default is not set")
        try:  # the settings document validates and renders an HAProxy config with this catalog
            render_config(catalog, gateway_settings(env.get("AIRFLOW_VAR_SELFHEAL_GATEWAY") or "{}"))
        except ValueError as e:
            problems.append(f"{name}: AIRFLOW_VAR_SELFHEAL_GATEWAY: {e}")
    return problems


def _conn_parts(value: str) -> tuple[str, int | None, str, str]:
    """(host, port, login, database) of a connection given as URI or JSON."""
    if value.lstrip().startswith("{"):
        d = json.loads(value)
        return d.get("host", ""), d.get("port"), d.get("login", ""), d.get("schema", "")
    u = urlsplit(value)
    return u.hostname or "", u.port, u.username or "", u.path.lstrip("/")


def _container_port(s: Stack, service: str) -> set[int]:
    ports = set()
    for p in s.services[service].get("ports", []):
        ports.add(int(str(p).rsplit(":", 1)[-1]))
    ports |= {int(p) for p in s.services[service].get("expose", [])}
    return ports


def check_wiring(s: Stack) -> list[str]:
    problems: list[str] = []
    components = s.airflow_services()
    if set(components.values()) != AIRFLOW_COMMANDS:
        problems.append(
            f"Airflow components: expected {sorted(AIRFLOW_COMMANDS)}, found {sorted(components.values())}"
        )
    envs = {n: s.environment(n) for n in [*components, "airflow-init"]}
    for key in SHARED_AIRFLOW_ENV:
        values = {n: e.get(key) for n, e in envs.items()}
        if len(set(values.values())) != 1 or None in values.values():
            problems.append(f"{key} differs between Airflow containers: {sorted(values)}")
    env = envs.get("airflow-scheduler", {})
    if env.get("AIRFLOW__CORE__EXECUTOR") != "CeleryExecutor":
        problems.append(f"executor is {env.get('AIRFLOW__CORE__EXECUTOR')!r}, not CeleryExecutor")
    if not env.get("AIRFLOW__API_AUTH__JWT_SECRET"):
        problems.append("AIRFLOW__API_AUTH__JWT_SECRET is empty: components would each invent one")

    pg = s.environment("postgres")
    broker = urlsplit(env.get("AIRFLOW__CELERY__BROKER_URL", ""))
    if (
        broker.scheme != "redis"
        or broker.hostname not in s.services
        or "redis" not in (s.services.get(broker.hostname or "", {}).get("image", ""))
    ):
        problems.append(f"broker {broker.geturl()!r} is not the redis service")
    elif (broker.port or 6379) not in _container_port(s, broker.hostname or ""):
        problems.append(f"broker port {broker.port or 6379} is not exposed by {broker.hostname}")
    for key, scheme in (
        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg"),
        ("AIRFLOW__CELERY__RESULT_BACKEND", "db+postgresql+psycopg"),
    ):
        u = urlsplit(env.get(key, ""))
        want = ("postgres", pg.get("POSTGRES_USER"), pg.get("POSTGRES_PASSWORD"), pg.get("POSTGRES_DB"))
        if u.scheme != scheme or (u.hostname, u.username, u.password, u.path.lstrip("/")) != want:
            problems.append(
                f"{key} does not point at the postgres service's metadata DB with its credentials"
            )

    # The triage DB: the init script's role and database, its password from the same variable.
    init = s.root / "include" / "compose" / "postgres-init.sh"
    script = init.read_text() if init.is_file() else ""
    m = re.search(r"CREATE ROLE (\w+) LOGIN PASSWORD :'pw';\s*CREATE DATABASE (\w+) OWNER \1;", script)
    if not m or 'pw="$SELFHEAL_DB_PASSWORD"' not in script:
        problems.append(f"{init}: does not create the triage role and database from $SELFHEAL_DB_PASSWORD")
    else:
        role, db = m.groups()
        for svc in [*envs, "gateway"]:
            e = s.environment(svc)
            for key in ("SELFHEAL_DATABASE_URL", "AIRFLOW_CONN_SELFHEAL_TRIAGE"):
                if key not in e:
                    continue
                u = urlsplit(e[key])
                got = (u.hostname, u.username, u.password, u.path.lstrip("/"))
                if got != ("postgres", role, pg.get("SELFHEAL_DB_PASSWORD"), db):
                    problems.append(f"{svc}: {key} is not {role}@postgres/{db} with SELFHEAL_DB_PASSWORD")
        if "./include/compose/postgres-init.sh" not in [src for src, _ in s.mounts("postgres")]:
            problems.append("postgres: the init script is not mounted into docker-entrypoint-initdb.d")

    # Every Airflow container waits for healthy Postgres and Redis, and (but init) for airflow-init.
    for name in [*components, "airflow-init"]:
        deps = s.services[name].get("depends_on", {})
        for dep in ("postgres", "redis"):
            if deps.get(dep, {}).get("condition") != "service_healthy":
                problems.append(f"{name}: does not wait for {dep} to be healthy")
        if name != "airflow-init" and deps.get("airflow-init", {}).get("condition") != (
            "service_completed_successfully"
        ):
            problems.append(f"{name}: does not wait for airflow-init to complete")
        if name != "airflow-init" and "healthcheck" not in s.services[name]:
            problems.append(f"{name}: no healthcheck")
    for name in ("postgres", "redis"):
        if "healthcheck" not in s.services[name]:
            problems.append(f"{name}: no healthcheck (the others wait for it)")

    api = urlsplit(env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", ""))
    api_service = next((n for n, c in components.items() if c == "api-server"), "")
    if (
        api.hostname != api_service
        or api.port not in _container_port(s, api_service)
        or api.path != "/execution/"
    ):
        problems.append(f"execution API URL {api.geturl()!r} is not the API server's /execution/")

    # Scanners: zap_default points at the ZAP daemon with the same key.
    zap_conn = env.get("AIRFLOW_CONN_ZAP_DEFAULT", "")
    if zap_conn:
        host, port, _, _ = _conn_parts(zap_conn)
        zap_env = s.environment(host) if host in s.services else {}
        if host not in s.services or f"-port {port}" not in s.command(host):
            problems.append(f"zap_default points at {host}:{port}, which is not the ZAP daemon")
        elif json.loads(zap_conn).get("password") != zap_env.get("ZAP_API_KEY"):
            problems.append("zap_default's password is not the ZAP daemon's ZAP_API_KEY")

    # Gateway: the same settings document for HAProxy's starter and the tasks; its run directory on a
    # volume shared with the workers, at the same path; an admin socket path Unix sockets accept.
    g_env = s.environment("gateway")
    doc = g_env.get("SELFHEAL_GATEWAY_JSON", "")
    if doc != env.get("AIRFLOW_VAR_SELFHEAL_GATEWAY"):
        problems.append("the gateway's SELFHEAL_GATEWAY_JSON differs from the selfheal_gateway Variable")
    try:
        settings = json.loads(doc)
        run_dir = PurePosixPath(settings["run_dir"])
    except (ValueError, KeyError):
        return [*problems, "gateway: SELFHEAL_GATEWAY_JSON is not a settings document with run_dir"]
    if len(str(run_dir / "admin.sock")) >= 108:
        problems.append(f"{run_dir}/admin.sock is too long for a Unix socket path")

    def volume_for(service: str) -> str | None:
        for src, target in s.mounts(service):
            if not src.startswith((".", "/")) and (
                run_dir == PurePosixPath(target) or PurePosixPath(target) in run_dir.parents
            ):
                return f"{src}:{target}"
        return None

    shared = volume_for("gateway")
    if shared is None or shared != volume_for("airflow-worker"):
        problems.append(f"gateway run dir {run_dir} is not on one named volume shared with the worker")
    if settings.get("http_port") not in _container_port(s, "gateway"):
        problems.append(f"gateway http_port {settings.get('http_port')} is not published")
    # Releases go on the network the gateway is on (the rollout Variable's Docker settings).
    from selfheal.rollout.backends.docker import DockerSettings

    try:
        docker = json.loads(env.get("AIRFLOW_VAR_SELFHEAL_ROLLOUT") or "{}").get("docker", {})
        network = DockerSettings(**docker).network
    except (ValueError, TypeError) as e:
        problems.append(f"AIRFLOW_VAR_SELFHEAL_ROLLOUT: not valid Docker settings: {e}")
    else:
        on = {
            (s.doc.get("networks") or {}).get(n, {}).get("name", n)
            for n in s.services["gateway"].get("networks", ["default"])
        }
        if network not in on:
            problems.append(f"releases are deployed on network {network!r}, the gateway is on {sorted(on)}")
    worker_mounts = dict((t, src) for src, t in s.mounts("airflow-worker"))
    if worker_mounts.get("/var/run/docker.sock") != "/var/run/docker.sock":
        problems.append("airflow-worker: no Docker socket (sandbox and Docker backend need it)")
    seed = g_env.get("SELFHEAL_GATEWAY_SEED", "")
    for item in filter(None, seed.split(",")):
        svc, _, target = item.partition("=")
        host, _, port = target.rpartition(":")
        if (
            host not in s.services
            or not int(port)
            or not set(s.services["gateway"].get("networks", []))
            & set(s.services[host].get("networks", ["default"]))
        ):
            problems.append(f"gateway seed {item!r}: {host} is not a service on a network the gateway shares")

    req = (s.root / "requirements.txt").read_text()
    for pkg in ("apache-airflow-providers-celery", "redis"):
        if not re.search(rf"^{re.escape(pkg)}==", req, re.M):
            problems.append(f"requirements.txt does not pin {pkg} (CeleryExecutor with a Redis broker)")
    return problems


def _metrics_path() -> str:
    """url_prefix of the plugin's FastAPI app + the app's metrics route, read from the code."""
    tree = ast.parse((PLUGINS / "selfheal_plugin.py").read_text())
    prefix = next(
        v.value
        for d in ast.walk(tree)
        if isinstance(d, ast.Dict)
        for k, v in zip(d.keys, d.values, strict=True)
        if isinstance(k, ast.Constant) and k.value == "url_prefix" and isinstance(v, ast.Constant)
    )
    return f"{prefix}/metrics"


def check_prometheus(s: Stack) -> list[str]:
    problems = []
    try:
        prom = yaml.safe_load(s.prometheus_text)
        jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    except (yaml.YAMLError, KeyError, TypeError) as e:
        return [f"prometheus.yml does not parse as a scrape configuration: {e}"]
    svc = s.services.get("prometheus", {})
    cmd = s.command("prometheus")
    config_file = re.search(r"--config\.file=(\S+)", cmd)
    if (
        not config_file
        or s.host_path("prometheus", config_file.group(1))
        != (s.root / "include" / "prometheus" / "prometheus.yml").resolve()
    ):
        problems.append("prometheus: --config.file is not include/prometheus/prometheus.yml")
    job = jobs.get("selfheal")
    if job is None:
        return [*problems, "prometheus.yml: no 'selfheal' job"]
    if job.get("metrics_path") != _metrics_path():
        problems.append(
            f"selfheal job scrapes {job.get('metrics_path')!r}, the plugin serves {_metrics_path()!r}"
        )
    targets = [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
    api = next((n for n, c in s.airflow_services().items() if c == "api-server"), "")
    if targets != [f"{api}:{p}" for p in sorted(_container_port(s, api))]:
        problems.append(f"selfheal job targets {targets}, not the API server {api}")
    auth = job.get("authorization", {})
    if auth.get("type", "Bearer") != "Bearer" or not auth.get("credentials_file"):
        problems.append("selfheal job: no bearer credentials_file for SELFHEAL_METRICS_TOKEN")
    elif f"> {auth['credentials_file']}" not in cmd or "${SELFHEAL_METRICS_TOKEN}" not in cmd:
        problems.append(
            "prometheus: the entrypoint does not write SELFHEAL_METRICS_TOKEN to the credentials file"
        )
    if s.environment("prometheus").get("SELFHEAL_METRICS_TOKEN") != s.environment(api).get(
        "SELFHEAL_METRICS_TOKEN"
    ):
        problems.append("prometheus and the API server do not get the same SELFHEAL_METRICS_TOKEN")
    gw = jobs.get("gateway")
    settings = json.loads(s.environment("gateway").get("SELFHEAL_GATEWAY_JSON", "{}"))
    if gw is not None and [t for sc in gw.get("static_configs", []) for t in sc["targets"]] != [
        f"gateway:{settings.get('stats_port')}"
    ]:
        problems.append("gateway job does not target the gateway's stats port")
    if "prometheus" not in s.services or not svc.get("healthcheck"):
        problems.append("prometheus service missing or without healthcheck")
    return problems


def check_grafana(s: Stack) -> list[str]:
    problems = []
    mounts = dict((t, src) for src, t in s.mounts("grafana"))
    prov = s.host_path("grafana", "/etc/grafana/provisioning")
    if prov is None or not prov.is_dir():
        return ["grafana: /etc/grafana/provisioning is not mounted from the repository"]
    sources = [
        d
        for f in sorted((prov / "datasources").glob("*.y*ml"))
        for d in yaml.safe_load(f.read_text()).get("datasources", [])
    ]
    prom = [d for d in sources if d.get("type") == "prometheus"]
    if len(prom) != 1 or not prom[0].get("isDefault"):
        problems.append("grafana: not exactly one default Prometheus datasource")
    else:
        u = urlsplit(prom[0]["url"])
        if u.hostname != "prometheus" or u.port not in _container_port(s, "prometheus"):
            problems.append(f"grafana datasource {prom[0]['url']} is not the prometheus service")
    providers = [
        p
        for f in sorted((prov / "dashboards").glob("*.y*ml"))
        for p in yaml.safe_load(f.read_text()).get("providers", [])
    ]
    paths = {PurePosixPath(p["options"]["path"]) for p in providers if p.get("type") == "file"}
    dashboards = [t for t in mounts if t.endswith(".json") and PurePosixPath(t).parent in paths]
    if not dashboards:
        problems.append("grafana: no dashboard JSON mounted where a file provider looks")
    try:
        dash = json.loads(s.dashboard_text)
    except ValueError as e:
        return [*problems, f"dashboard is not JSON: {e}"]
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("query") != "prometheus":
        problems.append("dashboard: no `datasource` variable of type prometheus")
    exported = exported_names()
    panels = [p for top in dash.get("panels", []) for p in (top, *top.get("panels", []))]
    exprs = [t["expr"] for p in panels for t in p.get("targets", []) if "expr" in t]
    if not exprs:
        problems.append("dashboard: no Prometheus expressions")
    for expr in exprs:
        unknown = set(re.findall(r"\bselfheal_[a-z0-9_]+", expr)) - exported
        if unknown:
            problems.append(
                f"dashboard expression uses metrics /selfheal/metrics does not export: {sorted(unknown)}"
            )
    return problems


def check_catalog(s: Stack) -> list[str]:
    """The compose catalog is include/services.yaml but for what the stack must change."""
    problems = []
    main = {
        x["name"]: x for x in yaml.safe_load((s.root / "include" / "services.yaml").read_text())["services"]
    }
    comp = {
        x["name"]: x
        for x in yaml.safe_load((s.root / "include" / "compose" / "services.yaml").read_text())["services"]
    }
    if set(main) != set(comp):
        problems.append(f"compose catalog services {sorted(comp)} != include/services.yaml {sorted(main)}")
    may_differ = {"base_url", "openapi_url", "scanners", "repository"}
    for name in set(main) & set(comp):
        for key in (set(main[name]) | set(comp[name])) - may_differ:
            if main[name].get(key) != comp[name].get(key):
                problems.append(f"compose catalog {name}.{key} differs from include/services.yaml")
        host = urlsplit(comp[name]["base_url"]).hostname
        if host not in s.services:
            problems.append(f"compose catalog {name}.base_url host {host!r} is not a compose service")
    return problems


CHECKS: dict[str, Callable[[Stack], list[str]]] = {
    "files": check_files,
    "environment": check_environment,
    "connections": check_connections_and_variables,
    "wiring": check_wiring,
    "prometheus": check_prometheus,
    "grafana": check_grafana,
    "catalog": check_catalog,
}


# ------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", list(CHECKS))
def test_the_stack_passes(stack: Stack, name: str) -> None:
    assert CHECKS[name](stack) == []


def test_code_reads_the_connections_and_variables_the_checks_expect() -> None:
    """The discovery itself finds what the code uses (else the checks above would pass on nothing)."""
    assert {"selfheal_triage", "zap_default", "gvm_default", "aws_default"} <= code_connections()
    assert {"selfheal_gateway", "selfheal_base_image", "selfheal_audit_anchor"} <= code_variables()
    assert not [v for v in code_variables() if v.startswith("<unresolved")], code_variables()


def test_stack_has_the_services_of_issue_8(stack: Stack) -> None:
    images = {n: str(s.get("image", "")) for n, s in stack.services.items()}
    assert images["zap"].startswith("ghcr.io/zaproxy/zaproxy:")
    assert {
        "postgres",
        "redis",
        "gateway",
        "zap",
        "prometheus",
        "grafana",
        "demo-target",
        "airflow-init",
    } <= set(stack.services)
    assert stack.services["demo-target"]["build"]["args"] == {"BASE_IMAGE": "python:3.11-slim"}
    assert "haproxy" in (REPO / "Dockerfile").read_text(), "the gateway runs HAProxy from the selfheal image"


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("Debian's docker-compose is not installed (scripts/bootstrap.sh installs it)")
    ok = _compose_config(exe, REPO / "docker-compose.yaml", REPO / ".env.example")
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)
    assert (
        resolved["services"]["airflow-worker"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    )
    # Without an .env file the secrets are missing: compose refuses, naming the fix.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    missing = _compose_config(exe, REPO / "docker-compose.yaml", empty)
    assert missing.returncode != 0 and "copy .env.example to .env" in missing.stderr


def _compose_config(exe: str, file: Path, env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [exe, "--project-directory", str(REPO), "--env-file", str(env_file), "-f", str(file), "config"],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        (
            "condition: service_completed_successfully",
            "condition: service_completed_sucessfully",
            "condition",
        ),
        ("    restart: always\n", "    restart: always\n    replicas: two\n", "replicas"),
        ("  airflow-scheduler:\n", "  airflow-scheduler:\n    ports: {8974: 8974}\n", "ports"),
    ],
)
def test_docker_compose_config_rejects_a_broken_copy(tmp_path: Path, old: str, new: str, error: str) -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("Debian's docker-compose is not installed (scripts/bootstrap.sh installs it)")
    text = (REPO / "docker-compose.yaml").read_text()
    assert old in text
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(text.replace(old, new, 1))
    proc = _compose_config(exe, broken, REPO / ".env.example")
    assert proc.returncode != 0 and error in proc.stderr, proc.stderr


def _break(stack: Stack, field: str, old: str, new: str) -> Stack:
    text = getattr(stack, field)
    assert old in text, f"{old!r} not in {field}: the broken copy would be the original"
    return replace(stack, **{field: text.replace(old, new, 1)})


BROKEN = [
    (
        "files",
        "compose_text",
        "./include/prometheus/prometheus.yml:",
        "./include/prometheus/prom.yml:",
        "bind mount source ./include/prometheus/prom.yml",
    ),
    (
        "files",
        "compose_text",
        "context: include/demo/target-api",
        "context: include/demo/target-apy",
        "build context",
    ),
    (
        "files",
        "compose_text",
        '/opt/selfheal/include/compose/gateway.py"]',
        '/opt/selfheal/include/compose/gw.py"]',
        "gw.py",
    ),
    (
        "environment",
        "compose_text",
        "${SELFHEAL_METRICS_TOKEN:-}",
        "${SELFHEAL_METRICS_SECRET}",
        "${SELFHEAL_METRICS_SECRET} has no default",
    ),
    (
        "environment",
        "env_example",
        "ZAP_API_KEY=change-me-zap-api-key",
        "ZAP_API_KEY=",
        "${ZAP_API_KEY} has no default",
    ),
    ("environment", "compose_text", "redis://redis:6379/0", "redis://$REDIS_HOST:6379/0", "write variables"),
    (
        "connections",
        "compose_text",
        "    AIRFLOW_CONN_ZAP_DEFAULT:",
        "    AIRFLOW_CONN_ZAP_OTHER:",
        "connection zap_default (read by the code) is not set",
    ),
    (
        "connections",
        "compose_text",
        "    AIRFLOW_VAR_SELFHEAL_BASE_IMAGE: python:3.11-slim\n",
        "    AIRFLOW_VAR_SELFHEAL_BASE_IMAGE: python:3.11-slim\n"
        "    AIRFLOW_VAR_SELFHEAL_AUDIT_ANCHOR: '{}'\n",
        "AIRFLOW_VAR_SELFHEAL_AUDIT_ANCHOR must not be set",
    ),
    ("connections", "compose_text", '"stats_port": 18404', '"stats_port": 18080', "http_port and stats_port"),
    (
        "wiring",
        "compose_text",
        "AIRFLOW__CELERY__BROKER_URL: redis://redis:6379/0",
        "AIRFLOW__CELERY__BROKER_URL: redis://cache:6379/0",
        "is not the redis service",
    ),
    (
        "wiring",
        "compose_text",
        "db+postgresql+psycopg://airflow:${POSTGRES_PASSWORD",
        "db+postgresql+psycopg://airflow:${SELFHEAL_DB_PASSWORD",
        "RESULT_BACKEND does not point",
    ),
    (
        "wiring",
        "compose_text",
        "AIRFLOW__CORE__EXECUTOR: CeleryExecutor",
        "AIRFLOW__CORE__EXECUTOR: LocalExecutor",
        "not CeleryExecutor",
    ),
    (
        "wiring",
        "compose_text",
        '      DUMB_INIT_SETSID: "0"\n',
        '      DUMB_INIT_SETSID: "0"\n      AIRFLOW__API_AUTH__JWT_SECRET: other\n',
        "AIRFLOW__API_AUTH__JWT_SECRET differs",
    ),
    (
        "wiring",
        "compose_text",
        '      - selfheal-run:/opt/selfheal/run\n    ports:\n      - "127.0.0.1:18080',
        '      - gateway-run:/opt/selfheal/run\n    ports:\n      - "127.0.0.1:18080',
        "not on one named volume",
    ),
    (
        "wiring",
        "compose_text",
        "@postgres:5432/selfheal\n    SELFHEAL_BASE_IMAGE",
        "@postgres:5432/triage\n    SELFHEAL_BASE_IMAGE",
        "SELFHEAL_DATABASE_URL is not selfheal@postgres/selfheal",
    ),
    (
        "wiring",
        "compose_text",
        '"host": "zap", "port": 8090',
        '"host": "zap", "port": 8080',
        "not the ZAP daemon",
    ),
    (
        "wiring",
        "compose_text",
        '{"docker": {"network": "selfheal-rollout"}}',
        '{"docker": {"network": "bridge"}}',
        "releases are deployed on network 'bridge'",
    ),
    (
        "wiring",
        "compose_text",
        '{"docker": {"network": "selfheal-rollout"}}',
        '{"docker": {"netwrok": "selfheal-rollout"}}',
        "not valid Docker settings",
    ),
    (
        "prometheus",
        "prometheus_text",
        "metrics_path: /selfheal/metrics",
        "metrics_path: /metrics",
        "the plugin serves '/selfheal/metrics'",
    ),
    (
        "prometheus",
        "prometheus_text",
        '"airflow-apiserver:8080"',
        '"airflow-webserver:8080"',
        "not the API server",
    ),
    (
        "prometheus",
        "prometheus_text",
        "credentials_file: /prometheus/selfheal_metrics_token",
        "credentials_file: /etc/prometheus/token",
        "does not write SELFHEAL_METRICS_TOKEN",
    ),
    ("prometheus", "prometheus_text", "scrape_configs:", "scrape_configs: 3\nx:", "does not parse"),
    (
        "grafana",
        "dashboard_text",
        "selfheal_rollbacks_total",
        "selfheal_rollback_count",
        "selfheal_rollback_count",
    ),
    (
        "grafana",
        "compose_text",
        "selfheal-dashboard.json:/var/lib/grafana/dashboards/selfheal-dashboard.json",
        "selfheal-dashboard.json:/var/lib/grafana/selfheal-dashboard.json",
        "no dashboard JSON mounted",
    ),
    (
        "catalog",
        "compose_text",
        "SELFHEAL_GATEWAY_SEED: demo-target=demo-target:8000",
        "SELFHEAL_GATEWAY_SEED: demo-target=demo:8000",
        None,
    ),
]


@pytest.mark.parametrize(
    ("check", "field", "old", "new", "expect"), BROKEN, ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)]
)
def test_a_broken_copy_is_reported(
    stack: Stack, check: str, field: str, old: str, new: str, expect: str | None
) -> None:
    broken = _break(stack, field, old, new)
    if expect is None:  # a seed naming no service: the wiring check, not the catalog one, reports it
        assert check_catalog(broken) == []
        assert any("gateway seed 'demo-target=demo:8000'" in p for p in check_wiring(broken))
        return
    problems = CHECKS[check](broken)
    assert any(expect in p for p in problems), problems


def test_metrics_route_serves_what_prometheus_scrapes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real app at the path and with the header the scrape config gives, token unset and set."""
    from fastapi.testclient import TestClient

    from selfheal.web.app import create_app
    from selfheal.web.auth import Auth

    def no_user() -> None:
        return None

    auth = Auth(require_user=no_user, page_user=no_user, login_url=lambda url: "/login")
    route = _metrics_path().removeprefix("/selfheal")
    url = f"sqlite:///{tmp_path / 'triage.db'}"
    monkeypatch.delenv("SELFHEAL_METRICS_TOKEN", raising=False)
    open_app = TestClient(create_app(database_url=lambda: url, auth=auth))
    # Prometheus with an empty credentials file sends "Bearer " with nothing after it.
    r = open_app.get(route, headers={"Authorization": "Bearer "})
    assert r.status_code == 200 and "selfheal_up" in r.text
    closed = TestClient(create_app(database_url=lambda: url, auth=auth, metrics_token="s3cret-token"))
    assert closed.get(route, headers={"Authorization": "Bearer "}).status_code == 401
    assert closed.get(route, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
