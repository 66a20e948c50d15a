"""The services catalog (include/services.yaml): what selfheal protects.

Validated with pydantic so every bad entry is reported with its name and
field at once, instead of failing later inside a DAG task. DAGs load it at
run time (never at parse time).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from selfheal.paths import INCLUDE_DIR

Tier = Literal["critical", "high", "medium", "low"]
Mode = Literal["observe", "mitigate", "heal"]
ScannerName = Literal["zap", "gvm", "inspector", "wapiti"]

DEFAULT_CATALOG = INCLUDE_DIR / "services.yaml"


class CatalogError(ValueError):
    """The catalog file is missing, unreadable or has invalid entries."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DockerTarget(_Strict):
    image: str
    port: int = Field(8000, ge=1, le=65535)
    health_path: str = "/health"


class KubernetesTarget(_Strict):
    namespace: str = "default"
    deployment: str
    service: str
    httproute: str | None = None
    container: str = "app"
    replicas: int = Field(2, ge=1)


class DeployTarget(_Strict):
    kind: Literal["docker", "kubernetes"] = "docker"
    docker: DockerTarget | None = None
    kubernetes: KubernetesTarget | None = None

    @field_validator("kubernetes")
    @classmethod
    def _k8s_needs_details(cls, v: KubernetesTarget | None, info):
        if info.data.get("kind") == "kubernetes" and v is None:
            raise ValueError("kind 'kubernetes' needs a 'kubernetes' block")
        return v


class Rollout(_Strict):
    strategy: Literal["blue_green", "canary"] = "canary"
    steps: tuple[int, ...] = (5, 25, 50, 100)

    @field_validator("steps")
    @classmethod
    def _steps_increase(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or list(v) != sorted(set(v)) or v[-1] != 100 or v[0] <= 0:
            raise ValueError("steps must increase strictly and end at 100")
        return v


class ScanSettings(_Strict):
    """How each scanner scans this service (defaults suit an HTTP API)."""

    zap_policy: str | None = None
    wapiti_modules: tuple[str, ...] | None = None
    wapiti_max_scan_s: float = Field(300.0, gt=0)
    gvm_hosts: tuple[str, ...] = ()  # default: the host of base_url
    gvm_scan_config: str | None = None
    timeout_s: float = Field(6 * 3600.0, gt=0)
    poke_interval_s: float = Field(30.0, gt=0)


class Service(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    base_url: str
    openapi_url: str | None = None
    scanners: tuple[ScannerName, ...] = ()
    schedule: str | None = None
    tier: Tier = "medium"
    owner: str
    repository: str
    dockerfile: str = "Dockerfile"
    test_command: str | None = None
    deploy: DeployTarget = DeployTarget()
    rollout: Rollout = Rollout()
    scan: ScanSettings = ScanSettings()
    mode: Mode = "observe"
    traffic_rps: float = Field(0.0, ge=0)
    internet_facing: bool = True
    change_window: str | None = None


class Catalog(_Strict):
    services: tuple[Service, ...]

    def get(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(f"unknown service {name!r}; the catalog has: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [s.name for s in self.services]


def catalog_path() -> Path:
    return Path(os.environ.get("SELFHEAL_CATALOG", DEFAULT_CATALOG))


def load_catalog(path: Path | str | None = None) -> Catalog:
    """Read and validate the catalog; relative repository paths resolve against the file."""
    p = Path(path) if path else catalog_path()
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise CatalogError(f"{p}: cannot read the services catalog: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise CatalogError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), list):
        raise CatalogError(f"{p}: expected a mapping with a 'services' list")
    problems: list[str] = []
    services: list[Service] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw["services"]):
        label = entry.get("name", f"#{i}") if isinstance(entry, dict) else f"#{i}"
        try:
            if isinstance(entry, dict) and "repository" in entry:
                repo = Path(str(entry["repository"]))
                if not repo.is_absolute() and "://" not in str(entry["repository"]):
                    entry = {**entry, "repository": str((p.parent / repo).resolve())}
            svc = Service.model_validate(entry)
        except ValidationError as e:
            for err in e.errors():
                loc = ".".join(str(x) for x in err["loc"]) or "(entry)"
                problems.append(f"service {label}: {loc}: {err['msg']}")
            continue
        if svc.name in seen:
            problems.append(f"service {label}: duplicate name")
            continue
        seen.add(svc.name)
        services.append(svc)
    if problems:
        raise CatalogError(f"{p}: {len(problems)} problems in the services catalog:\n  " + "\n  ".join(problems))
    return Catalog(services=tuple(services))
