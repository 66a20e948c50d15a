"""KEV and EPSS loaders against fixture feeds served from a loopback HTTP server."""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from selfheal.cli import app as cli
from selfheal.triage import intel
from selfheal.triage.schema import epss, kev

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "intel"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def feed_server(tmp_path: Path) -> Iterator[str]:
    """http://127.0.0.1:PORT serving the fixtures (and a gzipped EPSS CSV) from a thread."""
    for p in FIXTURES.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "epss.csv.gz").write_bytes(gzip.compress((FIXTURES / "epss.csv").read_bytes()))
    (tmp_path / "big.json").write_bytes(b"{" + b" " * 5000 + b"}")
    (tmp_path / "corrupt.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _all(engine: sa.Engine, table: sa.Table) -> dict[str, sa.Row]:
    with engine.connect() as c:
        return {r[0]: r for r in c.execute(sa.select(table))}


def test_kev_from_url(engine: sa.Engine, feed_server: str) -> None:
    res = intel.load_kev(engine, f"{feed_server}/kev.json")
    assert (res.loaded, res.skipped, res.changed) == (3, 1, 3)
    rows = _all(engine, kev)
    assert set(rows) == {"CVE-2021-44228", "CVE-2023-4966", "CVE-2024-3400"}
    log4j = rows["CVE-2021-44228"]
    assert (log4j.vendor_project, log4j.date_added, log4j.due_date, log4j.known_ransomware) == (
        "Apache",
        date(2021, 12, 10),
        date(2021, 12, 24),
        True,
    )
    assert rows["CVE-2024-3400"].known_ransomware is False
    again = intel.load_kev(engine, f"{feed_server}/kev.json")
    assert again.changed == 0  # unchanged entries are not rewritten


def test_epss_csv_gzip_and_api_json(engine: sa.Engine, feed_server: str) -> None:
    t0 = datetime(2025, 6, 1, tzinfo=UTC)
    res = intel.load_epss(engine, f"{feed_server}/epss.csv.gz", now=t0)
    assert (res.loaded, res.skipped, res.changed) == (5, 1, 5)
    rows = _all(engine, epss)
    assert rows["CVE-2021-44228"].epss == pytest.approx(0.94358)
    assert rows["CVE-2021-44228"].percentile == pytest.approx(0.99962)
    assert rows["CVE-2021-44228"].model_version == "v2025.03.14"
    assert rows["CVE-2021-44228"].score_date == date(2025, 6, 1)
    # an API page updates one score and adds one CVE; the rest stays
    res = intel.load_epss(engine, f"{feed_server}/epss-api.json", now=t0)
    assert (res.loaded, res.skipped, res.changed) == (2, 0, 2)
    rows = _all(engine, epss)
    assert len(rows) == 6
    assert rows["CVE-2024-1234"].epss == pytest.approx(0.12345)
    assert rows["CVE-2024-1234"].score_date == date(2025, 6, 2)
    assert rows["CVE-2022-0001"].epss == pytest.approx(0.00071)


def test_plain_file_path_works(engine: sa.Engine) -> None:
    assert intel.load_epss(engine, FIXTURES / "epss.csv").loaded == 5


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("missing.json", "cannot download: HTTP Error 404"),
        ("epss-api.json", "not a CISA KEV feed"),
        ("README.md", "not valid JSON"),
    ],
)
def test_kev_errors_name_the_source(engine: sa.Engine, feed_server: str, path: str, message: str) -> None:
    with pytest.raises(intel.IntelError, match=message) as exc:
        intel.load_kev(engine, f"{feed_server}/{path}")
    assert str(exc.value).startswith(f"{feed_server}/{path}: ")
    assert "\n" not in str(exc.value)
    assert _all(engine, kev) == {}


def test_epss_rejects_wrong_documents(feed_server: str) -> None:
    with pytest.raises(intel.IntelError, match="not an EPSS CSV"):
        intel.parse_epss(b"a,b,c\n1,2,3\n", "x.csv")
    with pytest.raises(intel.IntelError, match="not an EPSS API response"):
        intel.parse_epss(b'{"vulnerabilities": []}', "x.json")
    with pytest.raises(intel.IntelError, match="larger than the limit of 100 bytes"):
        intel.read_source(f"{feed_server}/big.json", max_bytes=100)
    with pytest.raises(intel.IntelError, match="unsupported URL scheme"):
        intel.read_source("ftp://example.org/kev.json")
    with pytest.raises(intel.IntelError, match="corrupt gzip"):
        intel.read_source(f"{feed_server}/corrupt.gz")


def test_cli_loads_from_url(feed_server: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade", "--url", url]).exit_code == 0
    res = runner.invoke(cli, ["db", "load-kev", f"{feed_server}/kev.json", "--url", url])
    assert res.exit_code == 0, res.output
    assert "3 kev entries read, 1 skipped, 3 rows changed" in res.output
    res = runner.invoke(cli, ["db", "load-epss", f"{feed_server}/nope.csv", "--url", url])
    assert res.exit_code == 1
    assert res.output.startswith(f"selfheal db: {feed_server}/nope.csv: cannot download")
