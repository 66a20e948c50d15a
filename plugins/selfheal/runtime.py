"""Where a running pipeline finds its gateway.

Whoever starts HAProxy (`make up`, docker-compose, an operator) and the tasks
that drive it must agree on one settings document (run directory with the
runtime socket, ports). It comes, in order, from: an explicit JSON text (the
tasks pass the `selfheal_gateway` Airflow Variable), the file named by
$SELFHEAL_GATEWAY_SETTINGS (JSON or YAML), or the local default under
$SELFHEAL_RUN_DIR/gateway. No Airflow import here: the tasks layer reads the
Variable and hands the text in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from selfheal.audit import ledger
from selfheal.catalog import Catalog
from selfheal.gateway.config import GatewaySettings
from selfheal.gateway.gateway import Gateway
from selfheal.gateway.state import AuditEvent, SqlStateStore
from selfheal.paths import PROJECT_ROOT

SETTINGS_ENV = "SELFHEAL_GATEWAY_SETTINGS"
GATEWAY_VARIABLE = "selfheal_gateway"
DEFAULT_HTTP_PORT = 18080
DEFAULT_STATS_PORT = 18404


class GatewaySettingsError(ValueError):
    """The gateway settings document is missing a field or has a wrong one."""


def default_run_dir() -> Path:
    return Path(os.environ.get("SELFHEAL_RUN_DIR", PROJECT_ROOT / ".run")) / "gateway"


def gateway_settings(raw: str | None = None) -> GatewaySettings:
    """The gateway settings from `raw` JSON, else $SELFHEAL_GATEWAY_SETTINGS, else the local default."""
    where = "the selfheal_gateway Variable"
    data: Any
    if raw:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise GatewaySettingsError(f"{where}: not JSON ({e})") from None
    elif os.environ.get(SETTINGS_ENV):
        path = Path(os.environ[SETTINGS_ENV])
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        except OSError as e:
            raise GatewaySettingsError(f"{where}: cannot read ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise GatewaySettingsError(f"{where}: not YAML/JSON ({e})") from None
    else:
        data = {"run_dir": str(default_run_dir()), "http_port": DEFAULT_HTTP_PORT,
                "stats_port": DEFAULT_STATS_PORT}
    if not isinstance(data, dict):
        raise GatewaySettingsError(f"{where}: expected an object with at least run_dir")
    try:
        return GatewaySettings.model_validate(data)
    except ValueError as e:
        raise GatewaySettingsError(f"{where}: {e}") from None


def write_gateway_settings(settings: GatewaySettings, path: Path) -> Path:
    """Write the document the tasks will read (for whoever starts HAProxy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(settings.model_dump_json(indent=2))
    return path


def ledger_hook(engine: sa.Engine) -> Any:
    """Gateway changes (rules, weights, servers) as audit-ledger entries."""

    def hook(event: AuditEvent) -> None:
        ledger.append(engine, actor=event.actor, action=f"gateway.{event.action}",
                      subject=event.subject, payload=event.detail)

    return hook


def open_gateway(engine: sa.Engine, catalog: Catalog, settings: GatewaySettings | None = None,
                 *, audited: bool = True) -> Gateway:
    """A Gateway client on the running HAProxy, its desired state in the triage database."""
    settings = settings or gateway_settings()
    store = SqlStateStore(engine)
    return Gateway.from_settings(settings, catalog, store, ledger_hook(engine) if audited else None)
