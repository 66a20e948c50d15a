"""Small scanner reports in the real formats, for the triage store tests.

The store is fed *bytes* and parses them with the real parsers
(selfheal.findings.parse_bytes), so these builders write the scanners' own
document shapes (ZAP traditional JSON, Wapiti JSON, Inspector2 ListFindings).
``stamp`` changes only report metadata: a re-scan that finds the same things.
"""

from __future__ import annotations

import json
from typing import Any

# (ZAP plugin id, name, riskcode, CWE) and the Wapiti category with the same CWE.
SQLI = ("40018", "SQL Injection", "3", "89", "SQL Injection")
XSS = ("40012", "Cross Site Scripting (Reflected)", "3", "79", "Cross Site Scripting")
CWE_REF = {
    "89": (
        "CWE-89: Improper Neutralization of Special Elements used in an SQL Command",
        "https://cwe.mitre.org/data/definitions/89.html",
    ),
    "79": (
        "CWE-79: Improper Neutralization of Input During Web Page Generation",
        "https://cwe.mitre.org/data/definitions/79.html",
    ),
}


def zap_json(
    host: str, instances: list[tuple[tuple[str, ...], str, str, str]], stamp: str = "t0", evidence: str = "ev"
) -> bytes:
    """ZAP traditional JSON: instances are (rule, method, path, param)."""
    alerts: dict[str, dict[str, Any]] = {}
    for rule, method, path, param in instances:
        a = alerts.setdefault(
            rule[0],
            {
                "pluginid": rule[0],
                "alertRef": rule[0],
                "alert": rule[1],
                "name": rule[1],
                "riskcode": rule[2],
                "confidence": "2",
                "riskdesc": "High (Medium)",
                "desc": f"<p>{rule[1]}</p>",
                "instances": [],
                "count": "0",
                "solution": "<p>Use prepared statements.</p>",
                "otherinfo": "",
                "reference": "",
                "cweid": rule[3],
                "wascid": "19",
                "sourceid": "1",
            },
        )
        a["instances"].append(
            {
                "uri": f"https://{host}{path}?{param}=1",
                "method": method,
                "param": param,
                "attack": "' OR '1'='1",
                "evidence": evidence,
                "otherinfo": "",
            }
        )
    for a in alerts.values():
        a["count"] = str(len(a["instances"]))
    doc = {
        "@programName": "ZAP",
        "@version": "2.16.1",
        "@generated": stamp,
        "site": [
            {"@name": f"https://{host}", "@host": host, "@port": "443", "@ssl": "true", "alerts": list(alerts.values())}
        ],
    }
    return json.dumps(doc).encode()


def wapiti_json(host: str, entries: list[tuple[tuple[str, ...], str, str, str]], stamp: str = "t0") -> bytes:
    """Wapiti JSON report: entries are (rule, method, path, param) with the ZAP rule tuples above."""
    vulns: dict[str, list[dict[str, Any]]] = {}
    cls: dict[str, dict[str, Any]] = {}
    for rule, method, path, param in entries:
        cat = rule[4]
        vulns.setdefault(cat, []).append(
            {
                "method": method,
                "path": path,
                "info": f"{cat} in the parameter {param}",
                "level": 3,
                "parameter": param,
                "referer": "",
                "module": "sql",
                "http_request": f"{method} {path} HTTP/1.1",
                "curl_command": f"curl https://{host}{path}",
                "wstg": ["WSTG-INPV-05"],
            }
        )
        title, url = CWE_REF[rule[3]]
        cls[cat] = {
            "desc": f"{cat} description",
            "sol": f"{cat} solution",
            "ref": {title: url},
            "wstg": ["WSTG-INPV-05"],
        }
    doc = {
        "vulnerabilities": vulns,
        "anomalies": {},
        "additionals": {},
        "classifications": cls,
        "infos": {"target": f"https://{host}/", "date": stamp, "version": "Wapiti 3.1.8", "scope": "folder"},
    }
    return json.dumps(doc).encode()


def inspector_json(
    items: list[tuple[str, str, str]], stamp: str = "t0", epss: float = 0.0005, exploit: str = "NO"
) -> bytes:
    """Inspector2 ListFindings page: items are (CVE, package, version)."""
    findings = []
    for cve, name, version in items:
        findings.append(
            {
                "awsAccountId": "012345678901",
                "description": f"{cve} in {name}",
                "epss": {"score": epss},
                "exploitAvailable": exploit,
                "findingArn": f"arn:aws:inspector2:us-east-1:012345678901:finding/{cve}{name}",
                "firstObservedAt": "2024-02-02T16:30:33.045000+01:00",
                "fixAvailable": "YES",
                "inspectorScore": 7.5,
                "inspectorScoreDetails": {
                    "adjustedCvss": {"score": 7.5, "scoringVector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"}
                },
                "lastObservedAt": stamp,
                "packageVulnerabilityDetails": {
                    "cvss": [
                        {
                            "baseScore": 7.5,
                            "scoringVector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H",
                            "source": "NVD",
                            "version": "3.1",
                        }
                    ],
                    "referenceUrls": [],
                    "relatedVulnerabilities": [],
                    "source": "NVD",
                    "sourceUrl": "",
                    "vendorSeverity": "HIGH",
                    "vulnerabilityId": cve,
                    "vulnerablePackages": [
                        {
                            "name": name,
                            "version": version,
                            "fixedInVersion": "9.9.9",
                            "packageManager": "PIP",
                            "epoch": 0,
                            "release": "",
                        }
                    ],
                },
                "remediation": {"recommendation": {"text": f"Upgrade {name}"}},
                "resources": [
                    {
                        "id": "arn:aws:ecr:us-east-1:012345678901:repository/app/sha256:1",
                        "type": "AWS_ECR_CONTAINER_IMAGE",
                        "details": {"awsEcrContainerImage": {"repositoryName": "app"}},
                    }
                ],
                "severity": "HIGH",
                "status": "ACTIVE",
                "title": f"{cve} - {name}",
                "type": "PACKAGE_VULNERABILITY",
                "updatedAt": stamp,
            }
        )
    return json.dumps({"findings": findings}).encode()
