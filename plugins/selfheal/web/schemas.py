"""Response models of the JSON API: they are what /selfheal/openapi.json documents.

Only declared fields leave the server (FastAPI filters responses through
them), so a column added to the database is not exposed by accident.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class FindingSummary(BaseModel):
    """One row of the triage queue. Text fields come from scanners: render them as text."""

    id: int
    fingerprint: str
    service: str | None
    scanner: str
    sources: list[str]
    kind: str
    rule_id: str
    cwe: int | None
    cves: list[str]
    title: str
    severity: str
    confidence: str | None
    cvss_score: float | None
    epss: float | None
    kev: bool | None
    method: str | None
    path: str | None
    param: str | None
    host: str | None
    port: str | None
    package_name: str | None
    package_version: str | None
    fixed_version: str | None
    file_path: str | None
    status: str
    priority: float | None
    ssvc_decision: str | None
    sla_due: datetime | None
    sla_overdue: bool
    first_seen: datetime
    last_seen: datetime
    mitigated_at: datetime | None
    resolved_at: datetime | None
    exposure_end: datetime | None = Field(
        description="first of mitigated_at / resolved_at; null while exposed"
    )
    exposure_seconds: float = Field(description="first_seen until exposure_end (or now while exposed)")


class FindingPage(BaseModel):
    total: int = Field(description="findings matching the filters (all pages)")
    limit: int
    offset: int
    items: list[FindingSummary]


class FindingFull(FindingSummary):
    rule_ids: list[str]
    cvss_vector: str | None
    exploit_available: bool | None
    fix_available: bool | None
    url: str | None
    line: int | None
    package_ecosystem: str | None
    evidence: str = Field(description="scanner evidence, attacker-controlled: never render as HTML")
    solution: str
    status_changed_at: datetime


class Source(BaseModel):
    scanner: str
    rules: list[str]
    observations: int
    first_observed: datetime | None
    last_observed: datetime | None


class ObservationItem(BaseModel):
    scan_run_id: int
    seen_at: datetime
    scanner: str
    scope: str | None
    run_status: str
    complete: bool


class Observations(BaseModel):
    total: int
    items: list[ObservationItem]


class ReportRef(BaseModel):
    id: int
    scan_run_id: int | None
    scanner: str | None
    format: str
    source: str
    sha256: str
    size: int
    received_at: datetime


class StatusChangeItem(BaseModel):
    id: int
    from_status: str | None
    to_status: str
    actor: str
    reason: str
    changed_at: datetime
    scan_run_id: int | None


class CheckItem(BaseModel):
    name: str
    status: str
    reason: str
    duration_s: float | None
    output: str | None = None
    details: dict[str, Any] | None = None


class SandboxResult(BaseModel):
    passed: bool
    reason: str
    failed_check: str | None
    duration_s: float | None
    image: str | None
    started_at: str | None
    checks: list[CheckItem]


class RolloutResult(BaseModel):
    strategy: str | None
    outcome: str | None
    reason: str
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    traffic_back_at: datetime | None
    verdict_count: int
    last_verdict: str | None
    verdicts: list[dict[str, Any]] | None = None


class PatchSummary(BaseModel):
    id: str
    service: str
    recipe: str
    state: str
    title: str
    delivery: str | None
    finding_ids: list[str]
    branch: str | None
    commit: str | None
    image: str | None
    image_digest: str | None
    reason: str
    approval: dict[str, Any] | None
    sandbox: SandboxResult | None
    rollout: RolloutResult | None
    history: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime


class PatchPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[PatchSummary]


class AuditItem(BaseModel):
    seq: int
    ts: datetime
    actor: str
    action: str
    subject: str | None
    payload: dict[str, Any]
    hash: str


class RolloutEvent(BaseModel):
    id: int
    at: datetime
    service: str
    patch_id: str | None
    kind: str
    detail: dict[str, Any] | list[Any] | None


class PatchDetail(PatchSummary):
    plan: dict[str, Any]
    policy: dict[str, Any] | None
    events: list[RolloutEvent]
    audit: list[AuditItem]


class VirtualPatch(BaseModel):
    id: str
    service: str
    action: str
    method: str | None
    path: str
    param: str | None
    attack_class: str | None
    cwe: int | None
    pattern: str
    reason: str
    updated_at: datetime | None


class FindingDetail(BaseModel):
    finding: FindingFull
    sources: list[Source]
    observations: Observations
    reports: list[ReportRef]
    status_changes: list[StatusChangeItem]
    patches: list[PatchSummary]
    virtual_patches: list[VirtualPatch]
    audit: list[AuditItem]


class Facets(BaseModel):
    service: dict[str, int]
    severity: dict[str, int]
    status: dict[str, int]
    ssvc: dict[str, int]
    kind: dict[str, int]


class OpenSeries(BaseModel):
    t: list[datetime] = Field(description="evenly spaced instants")
    open: list[int] = Field(description="active findings at each instant")
    new: list[int] = Field(description="findings first seen in the interval ending at each instant")
    mitigated: list[int]
    resolved: list[int]


class ExposureWindow(BaseModel):
    id: int
    title: str
    severity: str
    service: str | None
    status: str
    start: datetime
    end: datetime | None = Field(description="null: still exposed")
    ended_by: str | None
    seconds: float


class ExposureStats(BaseModel):
    severity: str
    closed: int = Field(description="windows that closed in the range")
    open: int = Field(description="findings exposed now")
    p50_s: float | None
    p90_s: float | None
    max_s: float | None
    mean_s: float | None


class ExposureResponse(BaseModel):
    start: datetime
    end: datetime
    total: int
    windows: list[ExposureWindow]
    summary: list[ExposureStats]


class ScannerStat(BaseModel):
    scanner: str
    last_run: datetime | None
    runs: int
    failed: int


class Overview(BaseModel):
    generated_at: datetime
    active_by_severity: dict[str, int]
    by_status: dict[str, int]
    active_total: int
    unmitigated_active: int
    sla_overdue: int
    patches_by_state: dict[str, int]
    scanners: list[ScannerStat]
