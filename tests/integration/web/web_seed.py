"""A triage database with a realistic history, for the web tests and the browser test.

Everything goes in through the project's real write paths: real scanner
reports (DefectDojo's samples and the hand-made ones) through
``store.ingest_reports`` at different times, status changes through
``store.set_status``, priorities through ``prioritize``, a virtual patch
through the gateway's ``SqlStateStore``, patches through the real
``PatchRecord`` state machine with ``VerificationResult`` / ``RolloutResult``
payloads, and audit entries through ``selfheal.audit.append``.

One ZAP report carries an XSS payload in its evidence and title: scanner
output is attacker-controlled, and the page must show it as text.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from selfheal import audit
from selfheal.findings import parse_bytes
from selfheal.gateway.state import AuditEvent, SqlStateStore
from selfheal.gateway.virtual_patch import derive
from selfheal.patches.model import FindingRef, PatchPlan, plan_id
from selfheal.patches.state import PatchRecord
from selfheal.pipeline_state import patches, rollout_events
from selfheal.rollout.backends.base import Release
from selfheal.rollout.strategies import RolloutResult
from selfheal.sandbox.result import CheckResult, VerificationResult
from selfheal.triage import intel, store
from selfheal.triage.db import make_engine
from selfheal.triage.prioritize import prioritize
from selfheal.triage.schema import findings as F

SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "scanner-samples"
XSS_EVIDENCE = '<img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script>'
XSS_TITLE = 'Reflected XSS <img src=x onerror="window.__xss=3">'


def xss_report() -> bytes:
    """The hand-made ZAP traditional-JSON report, re-targeted, with attacker-controlled evidence."""
    doc = json.loads((SAMPLES / "handmade" / "zap_traditional.json").read_bytes())
    site = doc["site"][0]
    site["@name"], site["@host"] = "http://localhost:8081", "localhost"
    alert = site["alerts"][0]
    alert.update(
        pluginid="40012", alertRef="40012", alert=XSS_TITLE, name=XSS_TITLE, cweid="79", riskcode="3"
    )
    inst = alert["instances"][0]
    inst.update(
        uri="http://localhost:8081/search?q=x",
        nodeName="http://localhost:8081/search (q)",
        param="q",
        attack='"><script>alert(1)</script>',
        evidence=XSS_EVIDENCE,
    )
    alert["instances"] = [inst]
    site["alerts"] = [alert]
    doc["site"] = [site]
    return json.dumps(doc).encode()


@dataclass
class Seeded:
    now: datetime
    findings: int = 0
    xss_id: int = 0
    sqli_id: int = 0
    patch_ids: dict[str, str] = field(default_factory=dict)  # outcome -> patch id
    by_service: dict[str, int] = field(default_factory=dict)
    resolved_ids: list[int] = field(default_factory=list)
    mitigated_ids: list[int] = field(default_factory=list)


def _load_intel(eng: sa.Engine, now: datetime) -> None:
    """KEV and EPSS entries (in the feeds' real formats) for CVEs the Inspector2 sample reports."""
    kev = {
        "title": "CISA Catalog of Known Exploited Vulnerabilities",
        "catalogVersion": "2026.01.01",
        "count": 2,
        "vulnerabilities": [
            {
                "cveID": cve,
                "vendorProject": "Go",
                "product": "stdlib",
                "vulnerabilityName": f"{cve} (seed)",
                "dateAdded": "2026-01-01",
                "shortDescription": "seed",
                "requiredAction": "patch",
                "dueDate": "2026-01-22",
                "knownRansomwareCampaignUse": "Unknown",
                "notes": "",
            }
            for cve in ("CVE-2025-58188", "CVE-2024-12797")
        ],
    }
    epss = "#model_version:v2025.03.14,score_date:2026-01-01T00:00:00Z\ncve,epss,percentile\n" + "".join(
        f"{cve},{p},{q}\n"
        for cve, p, q in (
            ("CVE-2025-58188", 0.91, 0.99),
            ("CVE-2024-12797", 0.42, 0.97),
            ("CVE-2025-61726", 0.2, 0.9),
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kev.json").write_text(json.dumps(kev))
        (Path(tmp) / "epss.csv").write_text(epss)
        intel.load_kev(eng, Path(tmp) / "kev.json", now=now)
        intel.load_epss(eng, Path(tmp) / "epss.csv", now=now)


def _ingest(
    eng: sa.Engine, path: str, *, scanner: str, service: str, at: datetime, data: bytes | None = None
) -> int:
    body = data if data is not None else (SAMPLES / path).read_bytes()
    res = store.ingest_reports(
        eng,
        [store.ReportIn(body, path, service=service)],
        scanner=scanner,
        service=service,
        scope=f"{service}:{scanner}",
        now=at,
        workers=0,
    )
    if res.quarantined == 0:
        store.finish_scan_run(eng, res.scan_run_id, status="succeeded", now=at + timedelta(minutes=2))
    else:
        store.finish_scan_run(eng, res.scan_run_id, status="failed", now=at + timedelta(minutes=1))
    return res.scan_run_id


def _ids(eng: sa.Engine, *where: Any) -> list[int]:
    with eng.connect() as c:
        return list(c.execute(sa.select(F.c.id).where(*where).order_by(F.c.id)).scalars())


def _move(eng: sa.Engine, fid: int, path: list[tuple[str, datetime, str]]) -> None:
    for status, at, actor in path:
        store.set_status(eng, fid, status, actor, reason=f"seed: {status}", now=at)
        audit.append(
            eng,
            actor=actor,
            action="finding_status",
            subject=f"finding:{fid}",
            payload={"status": status, "at": at.isoformat()},
        )


def _ref(eng: sa.Engine, fid: int) -> FindingRef:
    with eng.connect() as c:
        r = c.execute(sa.select(F).where(F.c.id == fid)).one()
    return FindingRef(
        fingerprint=r.fingerprint,
        rule_id=r.rule_id,
        title=r.title,
        severity=r.severity,
        kind=r.kind,
        scanner=r.scanner,
        db_id=r.id,
        cwe=r.cwe,
        cves=tuple(r.cves or ()),
        package=r.package_name,
    )


def _checks(passed: dict[str, bool], secs: float) -> list[CheckResult]:
    return [
        CheckResult(
            name=n,
            status="passed" if ok else "failed",
            reason="" if ok else f"{n} failed: exploit reproduces",
            duration_s=secs / len(passed),
            output=f"{n} output line\n<b>not html</b>",
        )
        for n, ok in passed.items()
    ]


def _patch(
    eng: sa.Engine, fid: int, service: str, recipe: str, outcome: str, at: datetime, sandbox_s: float = 0.0
) -> str:
    ref = _ref(eng, fid)
    diff = f"--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-old {recipe}\n+new {recipe}\n"
    plan = PatchPlan(
        id=plan_id(service, recipe, [ref.fingerprint], "base0", diff),
        service=service,
        recipe=recipe,
        findings=(ref,),
        title=f"{recipe}: fix {ref.title[:60]}",
        diff=diff,
        base_commit="base0",
    )
    rec = PatchRecord.new(plan, actor="selfheal:plan")
    rec.created_at = rec.updated_at = at
    if outcome == "planned":
        return _store_patch(eng, rec, fid)
    rec.committed("c0ffee" + plan.id[1:9], f"selfheal/{plan.id}")
    rec.start_verification()
    ok = outcome != "failed"
    checks = _checks({"tests": True, "exploit_replay": ok, "rescan": ok, "latency": True}, sandbox_s)
    vr = VerificationResult(
        patch_id=plan.id,
        service=service,
        commit=rec.commit or "",
        passed=ok,
        checks=checks,
        reason="" if ok else "exploit_replay: exploit still reproduces on the patched image",
        failed_check=None if ok else "exploit_replay",
        duration_s=sandbox_s,
        started_at=at.isoformat(),
        image_id="sha256:" + "ab" * 32,
    )
    rec.record_sandbox(ok, vr.to_dict(), image=vr.image_id, image_tag=f"{service}:{plan.id}")
    audit.append(
        eng,
        actor="selfheal:sandbox",
        action="sandbox_result",
        subject=f"patch:{plan.id}",
        payload={"passed": ok, "duration_s": sandbox_s},
    )
    if outcome in ("promoted", "rolled_back"):
        rec.to("deploying", actor="selfheal:policy", reason="auto-approved by policy")
        started = (at + timedelta(minutes=5)).timestamp()
        rel = Release(
            service=service, version=plan.id, color="green", image=f"{service}:{plan.id}", patch_id=plan.id
        )
        prev = Release(service=service, version="v1", color="blue", image=f"{service}:v1")
        bad = outcome == "rolled_back"
        verdicts = [
            {
                "event": "verdict",
                "phase": "step",
                "step": 5,
                "verdict": "pass",
                "decision": "continue",
                "judgement": {"verdict": "pass", "reasons": []},
            },
            {
                "event": "verdict",
                "phase": "step",
                "step": 25,
                "verdict": "fail" if bad else "pass",
                "decision": "abort" if bad else "continue",
                "judgement": {
                    "verdict": "fail" if bad else "pass",
                    "reasons": ["error rate 12.0% > 1.0%"] if bad else [],
                },
            },
        ]
        rr = RolloutResult(
            strategy="canary",
            service=service,
            outcome=outcome,
            release=rel,
            previous=prev,
            reason="step 25%: analysis fail: error rate 12.0% > 1.0%" if bad else "all steps passed",
            started_at=started,
            finished_at=started + (95 if bad else 240),
            traffic_back_at=started + 96 if bad else None,
            verdicts=verdicts,
        )
        rec.rollout = rr.to_dict()
        rec.to(outcome, actor="selfheal:rollout", reason=rr.reason)
        with eng.begin() as c:
            for i, (kind, detail) in enumerate(
                [("traffic", {"weights": {"blue": 95, "green": 5}}), ("verdict", verdicts[0])]
                + (
                    [("verdict", verdicts[1]), ("rollback", {"reason": rr.reason})]
                    if bad
                    else [("traffic", {"weights": {"green": 100}}), ("promotion", {})]
                )
            ):
                c.execute(
                    rollout_events.insert().values(
                        at=at + timedelta(minutes=5, seconds=30 * i),
                        service=service,
                        patch_id=plan.id,
                        kind=kind,
                        detail=detail,
                    )
                )
        audit.append(
            eng,
            actor="selfheal:rollout",
            action="rollback" if bad else "promotion",
            subject=f"patch:{plan.id}",
            payload={"reason": rr.reason},
        )
    return _store_patch(eng, rec, fid)


def _store_patch(eng: sa.Engine, rec: PatchRecord, fid: int) -> str:
    d = rec.to_dict()
    with eng.begin() as c:
        c.execute(
            patches.insert().values(
                id=d["id"],
                service=d["service"],
                recipe=d["recipe"],
                state=d["state"],
                finding_ids=[str(fid)],
                plan=d["plan"],
                branch=d["branch"],
                commit=d["commit"],
                image=d["image_tag"],
                image_digest=d["image"],
                sandbox=d["sandbox"] or None,
                rollout=d["rollout"] or None,
                reason=d["reason"],
                history=d["history"],
                created_at=rec.created_at,
                updated_at=rec.updated_at,
            )
        )
    return rec.id


def seed(url: str, *, now: datetime | None = None) -> Seeded:
    """Fill a migrated, empty triage database; returns the ids the tests look for."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    out = Seeded(now=now)
    eng = make_engine(url)
    try:
        ago = lambda days: now - timedelta(days=days)  # noqa: E731 - a local shorthand
        _ingest(eng, "zap/dvwa_baseline_dojo.xml", scanner="zap", service="shop", at=ago(20))
        _ingest(eng, "wapiti/example.xml", scanner="wapiti", service="shop", at=ago(12))
        _ingest(eng, "openvas/report_detail_v2.xml", scanner="gvm", service="orders", at=ago(9))
        _ingest(
            eng,
            "aws_inspector2/aws_inspector2_package_vuln_metadata.json",
            scanner="inspector",
            service="orders",
            at=ago(5),
        )
        _ingest(eng, "aws_inspector2/empty_with_error.json", scanner="inspector", service="orders", at=ago(4))
        _ingest(eng, "handmade/zap_traditional.json", scanner="zap", service="shop", at=ago(3))
        _ingest(eng, "handmade/zap-xss.json", scanner="zap", service="shop", at=ago(1), data=xss_report())
        _load_intel(eng, now)
        prioritize(eng, now=now)

        out.xss_id = _ids(eng, F.c.title == XSS_TITLE)[0]
        sqli = _ids(eng, F.c.cwe == 89, F.c.service == "shop", F.c.first_seen == ago(3))
        out.sqli_id = sqli[0]
        dvwa = _ids(eng, F.c.service == "shop", F.c.first_seen == ago(20))
        inspector = _ids(eng, F.c.service == "orders", F.c.first_seen == ago(5))

        # A virtual patch for the SQL injection, from the finding as the parser produced it.
        sqli_finding = next(
            f
            for f in parse_bytes(
                (SAMPLES / "handmade/zap_traditional.json").read_bytes(), "zap", service="shop"
            )
            if f.cwe == 89
        )
        rule = derive(sqli_finding)
        SqlStateStore(eng).put_rule(
            rule, AuditEvent("gateway.rule.apply", f"rule:{rule.id}", actor="selfheal:mitigate")
        )

        t3 = ago(3)
        _move(
            eng,
            out.sqli_id,
            [
                ("mitigated", t3 + timedelta(seconds=2), "selfheal:mitigate"),
                ("patching", t3 + timedelta(hours=1), "selfheal:patch"),
                ("resolved", ago(2), "selfheal:rescan"),
            ],
        )
        out.mitigated_ids.append(out.sqli_id)
        out.resolved_ids.append(out.sqli_id)
        for i, fid in enumerate(dvwa[:6]):
            t = ago(19) + timedelta(hours=i)
            _move(
                eng, fid, [("open", t, "alice"), ("mitigated", t + timedelta(hours=2), "selfheal:mitigate")]
            )
            out.mitigated_ids.append(fid)
            if i < 3:
                _move(eng, fid, [("resolved", ago(10 - i), "selfheal:rescan")])
                out.resolved_ids.append(fid)
        _move(eng, dvwa[6], [("accepted", ago(15), "bob")])
        _move(eng, dvwa[7], [("false_positive", ago(14), "bob")])
        for fid in inspector[:3]:
            _move(eng, fid, [("patching", ago(4), "selfheal:patch")])
        _move(eng, inspector[0], [("resolved", ago(1), "selfheal:rescan")])
        out.resolved_ids.append(inspector[0])

        out.patch_ids["promoted"] = _patch(
            eng, out.sqli_id, "shop", "sql_param", "promoted", t3 + timedelta(hours=1), 42.0
        )
        out.patch_ids["rolled_back"] = _patch(
            eng, inspector[1], "orders", "dep_bump", "rolled_back", ago(4), 95.5
        )
        out.patch_ids["failed"] = _patch(eng, inspector[2], "orders", "dep_bump", "failed", ago(4), 12.25)
        out.patch_ids["planned"] = _patch(eng, out.xss_id, "shop", "xss_escape", "planned", ago(1))
        audit.append(
            eng,
            actor="selfheal:ingest",
            action="detection",
            subject=f"finding:{out.xss_id}",
            payload={"evidence": XSS_EVIDENCE},
        )

        with eng.connect() as c:
            out.findings = c.execute(sa.select(sa.func.count()).select_from(F)).scalar_one()
            out.by_service = dict(
                c.execute(sa.select(F.c.service, sa.func.count()).group_by(F.c.service)).all()
            )
    finally:
        eng.dispose()
    return out
