"""The approval form renders attacker-controlled text inert (pure: no database, no Airflow)."""

from __future__ import annotations

from datetime import UTC, datetime

from markdown_it import MarkdownIt

from selfheal.catalog import Catalog, Service
from selfheal.patches.model import FindingRef, PatchPlan
from selfheal.patches.state import PatchRecord
from selfheal.remediation.approval import form, md_code, md_text
from selfheal.remediation.store import StoredPatch

EVIL_TITLE = "SQLi <img src=x onerror=alert(1)> [click](javascript:alert(2)) **bold** `code` &amp; <script>"
EVIL_DIFF = "--- a/x\n+++ b/x\n+print('```')\n+````\n+<script>alert(3)</script>\n"


def _render(text: str) -> str:
    # CommonMark with raw HTML enabled: the strictest test (the UI's renderer may be more careful).
    return MarkdownIt("commonmark", {"html": True}).render(text)


def test_free_text_cannot_form_html_links_or_emphasis() -> None:
    html = _render(md_text(EVIL_TITLE))
    assert "<img" not in html and "<script" not in html and "<a " not in html and "<strong>" not in html
    assert "<code>" not in html and "&amp;amp;" in html  # the entity stays text
    assert md_text("a\nb\r\nc\x00d") == "a b c d"
    assert len(md_text("x" * 1000)) < 320


def test_diff_stays_inside_its_fence_whatever_it_contains() -> None:
    block = md_code(EVIL_DIFF, "diff")
    html = _render(block)
    assert html.count("<pre>") == 1 and "<script>" not in html and "&lt;script&gt;" in html
    assert html.strip().endswith("</code></pre>")
    assert "more characters" in md_code("y" * 20_000, limit=100)


def test_form_shows_findings_diff_sandbox_and_policy_reasons() -> None:
    plan = PatchPlan(id="p0123456789abcde", service="svc", recipe="code_fix", title=EVIL_TITLE,
                     findings=(FindingRef("fp", "r", "t", "high", "web", db_id=7),), diff=EVIL_DIFF,
                     files=("x",), base_commit="abc")
    rec = PatchRecord.new(plan)
    rec.commit, rec.branch = "c0ffee", "selfheal/patch-p0123456789abcde"
    rec.start_verification()
    rec.record_sandbox(True, {"image": "svc:patch", "checks": [
        {"name": "tests", "status": "passed", "reason": ""},
        {"name": "exploit_replay", "status": "passed", "reason": ""}]}, image="sha256:1", image_tag="svc:patch")
    sp = StoredPatch(rec, [7], policy={"final": {"decision": "approval", "effective_mode": "heal",
                                                  "reasons": ["code fixes always need a human review"]}})
    rows = {7: {"id": 7, "severity": "high", "cwe": 89, "rule_id": "sql", "cves": [], "title": EVIL_TITLE,
                "method": "GET", "path_template": "/api/items", "param": "category", "status": "mitigated",
                "priority": 72.5, "sources": ["wapiti"], "first_seen": datetime.now(UTC)}}
    catalog = Catalog(services=(Service(name="svc", base_url="http://svc", owner="o@example.com",
                                        repository="/r", mode="heal"),))
    subject, body = form(sp, rows, catalog)
    assert subject == "Approve patch p0123456789abcde (code_fix) for svc?"
    html = _render(body)
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html
    for expected in ("code fixes always need a human review", "CWE-89", "tests: passed", "exploit",
                     "parameter category", "print("):
        assert expected in html.replace("\\", ""), expected
