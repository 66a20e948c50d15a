"""Severity and confidence normalization: every scanner's scale onto
``critical / high / medium / low / info``.

Rule: where the finding carries a CVSS-style score, the score decides (CVSS v3
qualitative bands, also applied to v2 and vendor scores on the same 0-10 scale,
so one yardstick orders findings from different scanners). Otherwise the
scanner's own label is mapped:

=========================  ===================================================
scanner / format           mapping
=========================  ===================================================
CVSS score (any scanner)   0.0 -> info, 0.1-3.9 low, 4.0-6.9 medium,
                           7.0-8.9 high, 9.0-10.0 critical
ZAP (API, JSON, XML)       riskcode 3/"High" -> high, 2/"Medium" -> medium,
                           1/"Low" -> low, 0/"Informational" -> info.
                           ZAP has no critical level; no score is reported.
Greenbone GMP              result ``severity`` score (bands above); negative
                           scores (-1 false positive, -2/-3 debug/error) ->
                           info. Without a score: threat label (Critical, High,
                           Medium, Low, Log/Debug/False Positive -> info).
AWS Inspector2             ``inspectorScore`` (bands above); without a score:
                           CRITICAL/HIGH/MEDIUM/LOW, INFORMATIONAL and
                           UNTRIAGED -> info.
Wapiti (JSON, XML)         level 4 critical, 3 high, 2 medium, 1 low, 0 info
                           (Wapiti >= 3.0.4 scale, as DefectDojo reads it).
SARIF 2.1.0                ``security-severity`` rule/result property (a score,
                           bands above), else a CVSS score property (e.g.
                           Dependency-Check ``cvssv3_baseScore``), else a
                           ``severity`` property label, else ``level``:
                           error -> high, warning -> medium, note -> low,
                           none -> info (SARIF's default level is warning).
=========================  ===================================================

Confidence is normalized to ``confirmed / high / medium / low / false_positive``
(or None when the scanner does not say).
"""

from __future__ import annotations

from selfheal.findings.model import Severity


def from_score(score: float) -> Severity:
    """CVSS v3 qualitative band for a 0-10 score (negative scores are informational)."""
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "medium"
    if score > 0.0:
        return "low"
    return "info"


# Labels used by several scanners, compared case-insensitively.
LABELS: dict[str, Severity] = {
    "critical": "critical",
    "high": "high",
    "medium": "medium",
    "moderate": "medium",
    "low": "low",
    "info": "info",
    "informational": "info",
    "information": "info",
    "none": "info",
    "log": "info",
    "debug": "info",
    "untriaged": "info",
    "false positive": "info",
    "error": "high",
    "warning": "medium",
    "note": "low",
}

ZAP_RISK_CODES: dict[str, Severity] = {"3": "high", "2": "medium", "1": "low", "0": "info"}
ZAP_RISK_LABELS: dict[str, Severity] = {
    "High": "high",
    "Medium": "medium",
    "Low": "low",
    "Informational": "info",
}
ZAP_CONFIDENCE_CODES: dict[str, str] = {
    "0": "false_positive",
    "1": "low",
    "2": "medium",
    "3": "high",
    "4": "confirmed",
}
ZAP_CONFIDENCE_LABELS: dict[str, str] = {
    "False Positive": "false_positive",
    "Low": "low",
    "Medium": "medium",
    "High": "high",
    "Confirmed": "confirmed",
}

WAPITI_LEVELS: dict[str, Severity] = {"4": "critical", "3": "high", "2": "medium", "1": "low", "0": "info"}

SARIF_LEVELS: dict[str, Severity] = {"error": "high", "warning": "medium", "note": "low", "none": "info"}

CONFIDENCE_LABELS: dict[str, str] = {
    "confirmed": "confirmed",
    "certain": "confirmed",
    "very-high": "high",
    "high": "high",
    "firm": "high",
    "medium": "medium",
    "low": "low",
    "tentative": "low",
    "false positive": "false_positive",
    "false_positive": "false_positive",
}


def from_label(label: str, default: Severity = "info") -> Severity:
    """Map a scanner's textual severity (any case) to ours; unknown labels -> ``default``."""
    return LABELS.get(label.strip().lower(), default)


def confidence_from_label(label: str) -> str | None:
    return CONFIDENCE_LABELS.get(label.strip().lower()) if label else None


def confidence_from_qod(qod: int) -> str:
    """Greenbone Quality of Detection (0-100) -> confidence. QoD 95+ covers
    exploit/remote_vul/package/registry checks, 70+ the default remote checks."""
    if qod >= 95:
        return "high"
    if qod >= 70:
        return "medium"
    return "low"
