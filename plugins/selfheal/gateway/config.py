"""Render the HAProxy configuration from the services catalog and validate it with ``haproxy -c``.

Routing is by Host header (``<service>.<domain>`` plus any extra names per
service, held in a map file), not by path prefix: the backend sees the
request exactly as the client sent it, so paths in findings, virtual patches
and the application agree without any rewriting.

Everything that changes at run time is left out of the file on purpose:
servers are added with ``add server`` (HAProxy 2.6 dynamic servers) and
virtual patches live in per-service ACL files that start empty and are
filled through the runtime API. The desired state for both is in the state
store and reconciled after a restart.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2
from pydantic import BaseModel, ConfigDict, Field, field_validator

from selfheal.catalog import Catalog, Service
from selfheal.gateway.logs import LOG_FORMAT
from selfheal.paths import INCLUDE_DIR

TEMPLATE_DIR = INCLUDE_DIR / "gateway"
TEMPLATE_NAME = "haproxy.cfg.j2"
HAPROXY_BIN = os.environ.get("SELFHEAL_HAPROXY", "haproxy")
_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
# Header values end up in a double-quoted HAProxy log-format string: no control characters.
_HEADER_VALUE = re.compile(r"^[\x20-\x7e]{1,1024}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")


class ConfigError(ValueError):
    """The gateway configuration cannot be rendered, or HAProxy rejects it (its message included)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecurityHeaders(_Strict):
    """Response headers added to every response of a service (including gateway-made ones)."""

    enabled: bool = True
    content_type_options: str | None = "nosniff"
    frame_options: str | None = "DENY"
    hsts: str | None = "max-age=31536000; includeSubDomains"
    csp: str | None = "default-src 'none'; frame-ancestors 'none'"
    referrer_policy: str | None = "no-referrer"
    remove_banners: bool = True
    extra: dict[str, str] = Field(default_factory=dict)

    def headers(self) -> list[tuple[str, str]]:
        if not self.enabled:
            return []
        pairs = [
            ("X-Content-Type-Options", self.content_type_options),
            ("X-Frame-Options", self.frame_options),
            ("Strict-Transport-Security", self.hsts),
            ("Content-Security-Policy", self.csp),
            ("Referrer-Policy", self.referrer_policy),
            *self.extra.items(),
        ]
        out = []
        for name, value in pairs:
            if value is None:
                continue
            if not _HEADER_NAME.match(name) or not _HEADER_VALUE.match(value):
                raise ConfigError(f"security header {name!r}: invalid name or value {value!r}")
            out.append((name, value))
        return out


class ServiceGateway(_Strict):
    hosts: tuple[str, ...] = ()
    health_path: str | None = None
    check_interval_ms: int = Field(1000, ge=100, le=600_000)
    balance: str = "roundrobin"
    timeout_server_ms: int = Field(30_000, ge=100, le=3_600_000)
    security_headers: SecurityHeaders = SecurityHeaders()

    @field_validator("hosts")
    @classmethod
    def _hosts_valid(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for h in v:
            if not _HOST.match(h):
                raise ValueError(f"invalid host name {h!r}")
        return v


class GatewaySettings(_Strict):
    """Where the gateway listens and per-service options the catalog does not carry."""

    run_dir: Path
    bind: str = "127.0.0.1"
    http_port: int = Field(8080, ge=1, le=65535)
    stats_port: int = Field(8404, ge=1, le=65535)
    domain: str = "localhost"
    default_service: str | None = None
    nbthread: int | None = Field(None, ge=1, le=64)
    services: dict[str, ServiceGateway] = Field(default_factory=dict)

    def for_service(self, name: str) -> ServiceGateway:
        return self.services.get(name, ServiceGateway())


@dataclass(frozen=True)
class GatewayPaths:
    """Files of one gateway instance, all under its private run directory."""

    run_dir: Path

    @property
    def config(self) -> Path:
        return self.run_dir / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        return self.run_dir / "admin.sock"

    @property
    def log_socket(self) -> Path:
        return self.run_dir / "log.sock"

    @property
    def hosts_map(self) -> Path:
        return self.run_dir / "hosts.map"

    @property
    def vp_dir(self) -> Path:
        return self.run_dir / "vp"

    def acl(self, service: str, action: str) -> Path:
        """The runtime-managed ACL file holding one service's rules of one action."""
        return self.vp_dir / f"{service}.{action}.acl"


ACL_ACTIONS = ("block_injection", "require_auth", "deny")


def _hq(value: object, log_format: bool = True) -> str:
    """Quote a value as an HAProxy double-quoted string (escaping \\, ", $ and, for log-format, %)."""
    s = str(value)
    if any(ord(c) < 0x20 for c in s):
        raise ConfigError(f"control character in configuration value {s[:60]!r}")
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    if log_format:
        s = s.replace("%", "%%")
    return f'"{s}"'


def _env() -> jinja2.Environment:
    env = jinja2.Environment(  # noqa: S701 - renders an HAProxy config, not HTML; values go through hq
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["hq"] = _hq
    return env


def _health_path(svc: Service, opts: ServiceGateway) -> str:
    path = opts.health_path or (svc.deploy.docker.health_path if svc.deploy.docker else "/health")
    if not re.match(r"^/[A-Za-z0-9._~/-]*$", path):
        raise ConfigError(f"service {svc.name}: invalid health path {path!r}")
    return path


def host_names(svc: Service, settings: GatewaySettings) -> list[str]:
    names = [f"{svc.name}.{settings.domain}", *settings.for_service(svc.name).hosts]
    return list(dict.fromkeys(names))


def render_config(catalog: Catalog, settings: GatewaySettings) -> str:
    """Render haproxy.cfg text for ``catalog`` (pure: touches no file)."""
    if not _HOST.match(settings.domain):
        raise ConfigError(f"invalid gateway domain {settings.domain!r}")
    unknown = set(settings.services) - set(catalog.names())
    if unknown:
        raise ConfigError(f"gateway settings name services missing from the catalog: {sorted(unknown)}")
    if settings.default_service and settings.default_service not in catalog.names():
        raise ConfigError(f"default_service {settings.default_service!r} is not in the catalog")
    if settings.http_port == settings.stats_port:
        raise ConfigError("http_port and stats_port must differ")
    paths = GatewayPaths(settings.run_dir)
    services = []
    seen_hosts: dict[str, str] = {}
    for svc in catalog.services:
        opts = settings.for_service(svc.name)
        for h in host_names(svc, settings):
            if h in seen_hosts:
                raise ConfigError(f"host {h!r} is claimed by both {seen_hosts[h]} and {svc.name}")
            seen_hosts[h] = svc.name
        services.append(
            {
                "name": svc.name,
                "opts": opts,
                "health_path": _health_path(svc, opts),
                "headers": opts.security_headers.headers(),
                "acl": {a: paths.acl(svc.name, a) for a in ACL_ACTIONS},
            }
        )
    return _env().get_template(TEMPLATE_NAME).render(
        settings=settings, paths=paths, services=services, log_format=LOG_FORMAT
    )


def hosts_map_text(catalog: Catalog, settings: GatewaySettings) -> str:
    return "".join(f"{h} {svc.name}\n" for svc in catalog.services for h in host_names(svc, settings))


def validate_config(path: Path, haproxy: str = HAPROXY_BIN) -> None:
    """Run ``haproxy -c``; raise ConfigError with HAProxy's ALERT lines when it refuses the file."""
    exe = shutil.which(haproxy)
    if exe is None:
        raise ConfigError(f"{haproxy}: HAProxy binary not found (set SELFHEAL_HAPROXY)")
    proc = subprocess.run([exe, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "ALERT" in ln] or [
            proc.stderr.strip() or f"exit status {proc.returncode}"
        ]
        raise ConfigError(f"{path}: haproxy -c rejected the configuration: " + " | ".join(lines))


def _write_private(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_config(
    catalog: Catalog,
    settings: GatewaySettings,
    *,
    validate: bool = True,
    haproxy: str = HAPROXY_BIN,
) -> GatewayPaths:
    """Render, validate and install the configuration in ``settings.run_dir``.

    The candidate is checked with ``haproxy -c`` before it replaces the
    current file, so a bad render never reaches a running gateway. ACL files
    are created empty when missing and never truncated (they are only read at
    start; live content comes from the runtime API).
    """
    paths = GatewayPaths(settings.run_dir)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.run_dir, 0o700)
    paths.vp_dir.mkdir(mode=0o700, exist_ok=True)
    text = render_config(catalog, settings)
    _write_private(paths.hosts_map, hosts_map_text(catalog, settings))
    for svc in catalog.services:
        for action in ACL_ACTIONS:
            acl = paths.acl(svc.name, action)
            if not acl.exists():
                _write_private(acl, "")
    candidate = paths.run_dir / "haproxy.cfg.new"
    _write_private(candidate, text)
    try:
        if validate:
            validate_config(candidate, haproxy)
    except ConfigError:
        candidate.unlink(missing_ok=True)
        raise
    os.replace(candidate, paths.config)
    return paths
