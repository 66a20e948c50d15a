"""What the three ZAP formats share: one Finding per alert instance, built the same way.

ZAP's report formats group instances under an "alert" (one rule at one risk
and confidence level on one site: what DefectDojo counts); the API returns
the instances flat. Either way we emit one Finding per instance (URL + method
+ parameter) and put the alert's identity in ``extra["group"]`` so the
per-alert view stays derivable.

Hot path (the API format is the bulk of web findings): everything that is a
property of the alert type (texts, CWE, severity...) is normalized once per
type in ``AlertType`` and shared by its instances.
"""

from __future__ import annotations

from typing import Any

from selfheal.findings.limits import EVIDENCE_MAX_CHARS, SHORT_MAX_CHARS, TEXT_MAX_CHARS, TITLE_MAX_CHARS, clip
from selfheal.findings.model import Finding, Severity
from selfheal.findings.parsers._base import cves_in, cwe_id, new_location, split_url
from selfheal.findings.severity import (
    ZAP_CONFIDENCE_CODES,
    ZAP_CONFIDENCE_LABELS,
    ZAP_RISK_CODES,
    ZAP_RISK_LABELS,
    confidence_from_label,
    from_label,
)

SCANNER = "zap"


def risk(value: str) -> Severity:
    """ZAP risk as a code ("0".."3", reports) or a label ("High", API)."""
    sev = ZAP_RISK_CODES.get(value) or ZAP_RISK_LABELS.get(value)
    return sev if sev is not None else from_label(value)


def confidence(value: str) -> str | None:
    conf = ZAP_CONFIDENCE_CODES.get(value) or ZAP_CONFIDENCE_LABELS.get(value)
    return conf if conf is not None else confidence_from_label(value)


def prose(value: str) -> str:
    """ZAP report prose is HTML paragraphs (``<p>..</p>``): keep the text, one paragraph per line."""
    if "<p>" in value:
        value = value.replace("</p>", "\n").replace("<p>", "")
    return clip(value.strip(), TEXT_MAX_CHARS)


def references(value: str) -> tuple[str, ...]:
    """Reference URLs: one per line (API) or per ``<p>`` paragraph (reports)."""
    if not value:
        return ()
    value = value.replace("</p>", "\n").replace("<p>", "\n")
    return tuple(clip(r, SHORT_MAX_CHARS) for r in (line.strip() for line in value.split("\n")) if r)


class AlertType:
    """The normalized, shared part of every instance of one ZAP alert."""

    __slots__ = ("confidence", "cves", "cwe", "description", "extra", "groups", "key", "references", "rule",
                 "severity", "solution", "title")

    def __init__(
        self,
        *,
        plugin_id: str,
        alert_ref: str,
        name: str,
        risk_value: str,
        confidence_value: str,
        cwe: Any,
        wasc: Any,
        description: str,
        solution: str,
        reference: str,
        tag_names: tuple[str, ...] = (),
    ) -> None:
        plugin_id, alert_ref, name = plugin_id.strip(), alert_ref.strip(), name.strip()
        self.rule = clip(alert_ref or plugin_id, SHORT_MAX_CHARS) or "unknown"
        self.title = clip(name, TITLE_MAX_CHARS) if name else f"ZAP rule {self.rule}"
        self.severity = risk(risk_value.strip())
        self.confidence = confidence(confidence_value.strip())
        cwe_n = cwe_id(cwe)
        self.cves: tuple[str, ...] = cves_in(*tag_names) if tag_names else ()
        if cwe_n is None and tag_names:
            cwe_n = next((c for c in map(cwe_id, tag_names) if c is not None), None)
        self.cwe = cwe_n
        self.description = prose(description) if description else ""
        self.solution = prose(solution) if solution else ""
        self.references = references(reference)
        self.extra: dict[str, Any] = {}
        if plugin_id and plugin_id != self.rule:
            self.extra["plugin_id"] = clip(plugin_id, 64)
        wasc_id = cwe_id(wasc)
        if wasc_id is not None:
            self.extra["wasc"] = wasc_id
        # Identity of the alert (rule, risk, confidence, name) within a site: the
        # unit ZAP's reports group instances by.
        self.key = f"{self.rule}|{self.severity}|{self.confidence}|{self.title}"
        self.groups: dict[str, str] = {}

    def group(self, site: str) -> str:
        g = self.groups.get(site)
        if g is None:
            g = self.groups[site] = f"{site}|{self.key}"
        return g


def instance(
    t: AlertType,
    site: str | None,
    url: str,
    method: str,
    param: str,
    attack: str,
    evidence: str,
    other: str,
    request: str = "",
) -> Finding:
    """One Finding for one instance of alert type ``t``. ``site=None``: the
    group's site is the URL's origin (the API format has no site element)."""
    origin, path = split_url(url)
    if len(url) > SHORT_MAX_CHARS:
        url = clip(url, SHORT_MAX_CHARS)
        path = clip(path, SHORT_MAX_CHARS)
    extra = t.extra.copy()
    extra["group"] = t.group(origin if site is None else site)
    if attack:
        extra["attack"] = clip(attack, EVIDENCE_MAX_CHARS)
    if other:
        extra["other_info"] = clip(other, EVIDENCE_MAX_CHARS)
    if request:
        extra["request"] = clip(request, EVIDENCE_MAX_CHARS)
    if method:
        method = method.upper() if len(method) <= 32 else clip(method.upper(), 32)
    if param and len(param) > SHORT_MAX_CHARS:
        param = clip(param, SHORT_MAX_CHARS)
    # Positional arguments in Finding's field order (a test pins that order):
    # this runs once per finding and keywords cost a microsecond each time.
    return Finding(
        SCANNER, t.rule, t.title, t.severity, "web", t.confidence, t.cwe, t.cves, None, None,
        new_location(url, method or None, path, param or None),
        None, clip(evidence, EVIDENCE_MAX_CHARS) if evidence else "", t.solution, t.description, t.references,
        None, None, None, None, None, None, "", extra,
    )
