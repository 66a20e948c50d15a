"""The Self-Healing page in a real headless Chromium, inside a real `airflow standalone`.

`scripts/airflow-local.sh up` (what `make up` runs) starts Airflow with its own
run directory and port; the triage database it uses is seeded through the real
write paths (tests/integration/web/web_seed.py), including a ZAP finding whose
evidence and title carry XSS payloads. Then Debian's Chromium, driven by
Playwright against the system binary (no browser download), logs in through
Airflow's login page, opens "Self-Healing" from the navigation (Airflow shows
it in an iframe), filters, opens the XSS finding, checks that the payloads are
shown as text and never ran, and saves screenshots to tests/artifacts/ui-*.png.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.local_run_kit import remove_private_postgres, stack_env

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.postgres]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def chromium_binary() -> Path:
    """Debian's Chromium (the real ELF behind the /usr/bin/chromium wrapper script), installed if missing."""
    candidates = [Path("/usr/lib/chromium/chromium"), Path(shutil.which("chromium") or "/usr/bin/chromium")]
    found = next((p for p in candidates if _is_elf(p)), None)
    if found is None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
        found = next((p for p in candidates if _is_elf(p)), None)
    if found is None:
        pytest.fail(
            "Debian's chromium is not installed (apt-get install -y chromium; scripts/bootstrap.sh does it)"
        )
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_self_healing_page_in_chromium(tmp_path: Path, base_image: str) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is pinned in requirements-dev.txt"
    )
    from tests.integration.web import web_seed as seed_mod

    chromium = chromium_binary()
    port = _free_port()
    run = tmp_path / "run"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AIRFLOW") and k not in ("SELFHEAL_DATABASE_URL", "SELFHEAL_TEST_DATABASE_URL")
    }
    env.update(
        stack_env(run),  # a private run dir, free ports and an own Docker network
        SELFHEAL_AIRFLOW_PORT=str(port),
        SELFHEAL_BASE_IMAGE=base_image,
        AIRFLOW__CORE__PARALLELISM="2",
        SELFHEAL_DEMO="0",  # the page is checked against the seeded data alone
    )
    script = str(REPO / "scripts" / "airflow-local.sh")
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=400)
        assert up.returncode == 0, up.stderr[-3000:]
        password = re.search(r"password\s+(\S+)", up.stdout).group(1)
        timings["airflow_up_s"] = time.monotonic() - t0

        # The triage database Airflow was started with (services.sh picks the run dir's own Postgres).
        url = subprocess.run(
            ["bash", "-c", 'eval "$(scripts/services.sh env)"; printf %s "$SELFHEAL_DATABASE_URL"'],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert url.startswith("postgresql"), url
        from selfheal.triage.migrate import upgrade

        upgrade(url)
        seeded = seed_mod.seed(url)
        t1 = time.monotonic()

        # The real API server reads the same database for /selfheal/metrics (no session needed).
        with urllib.request.urlopen(f"{base}/selfheal/metrics", timeout=30) as r:
            fams = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        assert fams["selfheal_up"].samples[0].value == 1
        assert sum(x.value for x in fams["selfheal_findings"].samples) == seeded.findings

        with sync_api.sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"),  # a fresh --user-data-dir
                executable_path=str(chromium),
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1440, "height": 900},
            )
            problems: list[str] = []
            page = ctx.new_page()
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "console",
                lambda m: (
                    problems.append(m.text)
                    if re.search(r"Content Security Policy|Trusted Type|TrustedHTML|Uncaught", m.text)
                    else None
                ),
            )
            page.set_default_timeout(20_000)

            # Log in through Airflow's own login page.
            page.goto(base + "/")
            page.wait_for_url(re.compile(r"/auth/login"))
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda u: "/auth/login" not in u)

            # "Self-Healing" in the navigation opens our page in Airflow's iframe.
            page.get_by_role("link", name="Self-Healing").first.click()
            page.wait_for_url(re.compile(r"/plugin/self-healing"))
            frame = page.frame_locator('iframe[title="Self-Healing"]')
            rows = frame.locator("#queue-body tr.row")
            rows.first.wait_for()
            pager = frame.locator("#queue-pager .range")
            total_active = int(re.search(r"of (\d+)", pager.inner_text()).group(1))
            assert (
                total_active == seeded.findings - len(seeded.resolved_ids) - 2
            )  # minus accepted + false positive
            assert rows.count() == 50, "server-side paging: 50 rows per page"
            page.screenshot(path=str(ARTIFACTS / "ui-queue.png"))

            # Filter: only high, across every status.
            frame.locator("#f-status").select_option("")
            frame.locator('#f-severity input[value="high"]').check()
            frame.locator("#queue-pager .range").filter(has_text=re.compile(r"of \d+$")).wait_for()
            page.wait_for_function(
                """() => { const d = document.querySelector('iframe[title="Self-Healing"]').contentDocument;
                           const r = [...d.querySelectorAll('#queue-body tr.row')];
                           return r.length > 0 && r.every(x => x.dataset.severity === 'high'); }"""
            )
            highs = int(re.search(r"of (\d+)", pager.inner_text()).group(1))
            assert 0 < highs < seeded.findings

            # Search for the finding whose scanner evidence is an XSS payload, and open it.
            frame.locator("#f-q").fill("onerror")
            page.wait_for_function(
                """() => { const d = document.querySelector('iframe[title="Self-Healing"]').contentDocument;
                           return d.querySelectorAll('#queue-body tr.row').length === 1; }"""
            )
            row = rows.first
            assert row.locator(".ftitle").inner_text() == seed_mod.XSS_TITLE
            row.click()
            detail = frame.locator("#detail")
            detail.locator("pre.evidence").wait_for()
            assert detail.locator("pre.evidence").inner_text() == seed_mod.XSS_EVIDENCE
            assert detail.locator("h2.ftitle").inner_text() == seed_mod.XSS_TITLE
            assert detail.locator("img, script").count() == 0, "payload markup became elements"
            assert detail.get_by_text("xss_escape").count() >= 1, "the planned patch for it is listed"
            time.sleep(0.3)  # give an injected handler every chance to run
            inner = page.frame(url=re.compile(r"/selfheal/"))
            assert inner is not None
            assert inner.evaluate("typeof window.__xss") == "undefined"
            assert page.evaluate("typeof window.__xss") == "undefined"
            page.screenshot(path=str(ARTIFACTS / "ui-finding.png"))

            # Patches with their sandbox and rollout results.
            frame.locator("#tab-patches").click()
            frame.locator("#patch-body tr.row").first.wait_for()
            frame.locator(f'#patch-body tr[data-patch="{seeded.patch_ids["rolled_back"]}"]').click()
            frame.locator("#detail").get_by_text("canary → rolled back").first.wait_for()
            page.screenshot(path=str(ARTIFACTS / "ui-patches.png"))

            # Exposure windows and open findings over time, drawn as SVG by the page's own script.
            frame.locator("#tab-charts").click()
            frame.locator("#chart-open svg polyline").wait_for()
            assert frame.locator("#chart-exposure svg rect.win").count() >= 40
            page.screenshot(path=str(ARTIFACTS / "ui-exposure.png"))
            ctx.close()
        timings["browser_s"] = time.monotonic() - t1
        assert problems == [], problems
    finally:
        down = subprocess.run([script, "down"], env=env, capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr
    remove_private_postgres(run)
    print(f"timings: {timings}")
    for name in ("ui-queue.png", "ui-finding.png", "ui-patches.png", "ui-exposure.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000, name
