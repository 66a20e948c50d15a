"""InspectorHook and InspectorFindingsTrigger over real boto3 + HTTP against moto in server mode.

moto answers ListFindings from a seeded queue and applies no filter (see
tests/doubles/inspector_moto.py), so each test checks two things: what went over the
wire (the filter moto received) and what the hook made of the answer.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.stub import Stubber

from selfheal.findings.parsers import parse_bytes
from selfheal.scanners.errors import ScannerAuthError, ScannerTransientError
from selfheal.scanners.inspector import (
    InMemoryWatermarkStore,
    InspectorAuthError,
    InspectorError,
    InspectorFindingsTrigger,
    InspectorHook,
    InspectorTransientError,
    iso,
)
from tests.doubles.inspector_moto import (
    MotoInspector2,
    ScriptedErrorsProxy,
    connection_json,
    free_closed_port,
    sample_findings,
)

T0 = datetime(2026, 1, 5, 8, 0, 0, 120000, tzinfo=UTC)
T1 = datetime(2026, 1, 6, 9, 30, 0, 250000, tzinfo=UTC)
T2 = datetime(2026, 1, 7, 10, 45, 0, 999000, tzinfo=UTC)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoInspector2]:
    with MotoInspector2() as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoInspector2, monkeypatch: pytest.MonkeyPatch) -> MotoInspector2:
    moto_server.reset()
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json(moto_server.endpoint_url))
    return moto_server


def _finding(arn: str, updated: datetime, status: str = "ACTIVE") -> dict[str, Any]:
    """A real-shaped PACKAGE_VULNERABILITY finding (from the DefectDojo sample) with new identity/times."""
    f = copy.deepcopy(sample_findings("aws_inspector2/aws_inspector2_one_vul.json")[0])
    f.update(findingArn=f"arn:aws:inspector2:us-east-1:123456789012:finding/{arn}", status=status)
    f["updatedAt"] = updated.isoformat()
    return f


def _findings(batch_or_pages: Any) -> list[dict[str, Any]]:
    pages = getattr(batch_or_pages, "pages", batch_or_pages)
    return [f for p in pages for f in json.loads(p.body)["findings"]]


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _fingerprints(data: bytes, source: str) -> list[str]:
    return sorted(f.fingerprint for f in parse_bytes(data, source, fmt="inspector2"))


def _run(trigger: InspectorFindingsTrigger, *, seed_when=None, seed=None) -> tuple[dict, float]:
    """Run the trigger's real async generator to its first event; optionally seed moto mid-way,
    as soon as ``seed_when()`` is true (polled every 20 ms while the trigger runs)."""

    async def main() -> dict:
        gen = trigger.run()
        task = asyncio.ensure_future(anext(gen))
        if seed_when is not None:
            while not seed_when() and not task.done():
                await asyncio.sleep(0.02)
            await asyncio.to_thread(seed)
        event = await task
        await gen.aclose()
        return event.payload

    start = time.monotonic()
    payload = asyncio.run(main())
    return payload, time.monotonic() - start


# --------------------------------------------------------------------------- hook


def test_all_three_finding_types_come_back_in_the_real_list_findings_shape(moto: MotoInspector2) -> None:
    one = sample_findings("aws_inspector2/aws_inspector2_one_vul.json")
    lambda_ = sample_findings("aws_inspector2/aws_inspector2_package_vuln_metadata.json")
    mixed = [f for f in sample_findings("handmade/inspector2_mixed.json") if f["status"] != "SUPPRESSED"]
    seeded = one + lambda_ + mixed
    assert {f["type"] for f in seeded} == {
        "PACKAGE_VULNERABILITY",
        "NETWORK_REACHABILITY",
        "CODE_VULNERABILITY",
    }
    moto.queue_results(seeded)

    batch = InspectorHook().list_findings(since=None)

    got = _findings(batch)
    assert [f["findingArn"] for f in got] == [f["findingArn"] for f in seeded]
    assert {f["type"] for f in got} == {"PACKAGE_VULNERABILITY", "NETWORK_REACHABILITY", "CODE_VULNERABILITY"}
    # boto3 turned the wire's epoch seconds into datetimes; the hook writes ISO 8601 text (UTC).
    for g, s in zip(got, seeded, strict=True):
        for field in ("updatedAt", "firstObservedAt", "lastObservedAt"):
            assert g[field].endswith("+00:00") and _instant(g[field]) == _instant(s[field]), (field, g[field])
    ecr = got[0]["resources"][0]["details"]["awsEcrContainerImage"]
    assert _instant(ecr["pushedAt"]) == _instant(
        one[0]["resources"][0]["details"]["awsEcrContainerImage"]["pushedAt"]
    )
    # The real parser reads the hook's bytes exactly as it reads the original samples.
    expected = _fingerprints(json.dumps({"findings": seeded}).encode(), "samples")
    assert len(batch.pages) == 1  # moto does not paginate (the Stubber test below does)
    assert _fingerprints(batch.pages[0].body, "hook") == expected
    assert batch.watermark == max(_instant(s["updatedAt"]) for s in seeded)
    assert batch.count == len(seeded) == 31
    # On the wire: both statuses, no updatedAt bound (no watermark yet), the largest page size.
    assert moto.queries() == [
        {
            "filterCriteria": {
                "findingStatus": [
                    {"comparison": "EQUALS", "value": "ACTIVE"},
                    {"comparison": "EQUALS", "value": "CLOSED"},
                ]
            },
            "maxResults": 100,
            "nextToken": None,
        }
    ]


def test_watermark_is_sent_inclusive_filters_old_findings_and_advances_only_after_ingest(
    moto: MotoInspector2,
) -> None:
    store, hook, seen = InMemoryWatermarkStore(), InspectorHook(), []
    old, mid, new = _finding("old", T0), _finding("mid", T1), _finding("new", T2)

    moto.queue_results([old, mid])
    first = hook.sync(store, lambda page: seen.extend(json.loads(page.body)["findings"]))
    assert (first.since, first.watermark, first.findings) == (None, T1, 2)
    assert store.get(first.key) == T1

    # moto ignores the filter, like a server returning stale rows: the hook still drops `old`
    # (before the watermark) and keeps `mid` (equal to it: inclusive, the ingest is idempotent).
    moto.queue_results([old, mid, new])
    seen.clear()
    second = hook.sync(store, lambda page: seen.extend(json.loads(page.body)["findings"]))
    assert [f["findingArn"].rsplit("/", 1)[1] for f in seen] == ["mid", "new"]
    assert (second.since, second.watermark, store.get(second.key)) == (T1, T2, T2)
    sent = moto.queries()[-1]["filterCriteria"]["updatedAt"]
    assert sent == [{"startInclusive": pytest.approx(T1.timestamp(), abs=1e-6)}]

    # A failing ingest leaves the watermark where it was, so the retry re-reads the same findings.
    newer = _finding("newer", T2 + timedelta(hours=1))
    moto.queue_results([newer])

    def boom(page: Any) -> None:
        raise RuntimeError("triage DB down")

    with pytest.raises(RuntimeError, match="triage DB down"):
        hook.sync(store, boom)
    assert store.get(second.key) == T2
    retry = hook.sync(store, lambda page: None)
    assert (retry.findings, store.get(second.key)) == (1, T2 + timedelta(hours=1))

    # Nothing changed since: an empty answer leaves the watermark alone.
    quiet = hook.sync(store, lambda page: None)
    assert (quiet.findings, quiet.advanced, store.get(second.key)) == (0, False, T2 + timedelta(hours=1))


def test_status_filter_asks_only_for_active_and_closed(moto: MotoInspector2) -> None:
    moto.queue_results(
        [_finding("a", T1, "ACTIVE"), _finding("c", T1, "CLOSED"), _finding("s", T1, "SUPPRESSED")]
    )

    batch = InspectorHook().list_findings(since=T0)

    assert sorted(f["status"] for f in _findings(batch)) == ["ACTIVE", "CLOSED"]
    criteria = moto.queries()[0]["filterCriteria"]
    assert criteria["findingStatus"] == [
        {"comparison": "EQUALS", "value": "ACTIVE"},
        {"comparison": "EQUALS", "value": "CLOSED"},
    ]
    assert criteria["updatedAt"][0]["startInclusive"] == pytest.approx(T0.timestamp(), abs=1e-6)
    with pytest.raises(InspectorError, match="statuses"):
        InspectorHook().list_findings(since=None, statuses=["OPEN"])


def test_paginator_walks_next_tokens_and_merges_hand_built_pages() -> None:
    # moto never paginates, so the real boto3 paginator is driven here by botocore's Stubber,
    # which answers at the client's request boundary with hand-built pages (no HTTP).
    hook = InspectorHook(aws_conn_id=None, region_name="us-east-1")
    client = hook.get_conn()

    def page(names: list[str], stamp: datetime) -> list[dict[str, Any]]:
        return [
            {
                **{k: v for k, v in _finding(n, stamp).items() if k in ("findingArn", "type", "status")},
                "awsAccountId": "123456789012",
                "description": "d",
                "severity": "HIGH",
                "firstObservedAt": T0,
                "lastObservedAt": stamp,
                "updatedAt": stamp,
                "remediation": {},
                "resources": [{"type": "AWS_EC2_INSTANCE", "id": f"i-{n}"}],
            }
            for n in names
        ]

    criteria = {
        "findingStatus": [
            {"comparison": "EQUALS", "value": "ACTIVE"},
            {"comparison": "EQUALS", "value": "CLOSED"},
        ],
        "updatedAt": [{"startInclusive": T0}],
    }
    with Stubber(client) as stub:
        stub.add_response(
            "list_findings",
            {"findings": page(["a", "b"], T1), "nextToken": "tok-1"},
            {"filterCriteria": criteria, "maxResults": 2},
        )
        stub.add_response(
            "list_findings",
            {"findings": page(["c", "d"], T2), "nextToken": "tok-2"},
            {"filterCriteria": criteria, "maxResults": 2, "nextToken": "tok-1"},
        )
        stub.add_response(
            "list_findings",
            {"findings": page(["e"], T1)},
            {"filterCriteria": criteria, "maxResults": 2, "nextToken": "tok-2"},
        )
        batch = hook.list_findings(since=T0, page_size=2)
        stub.assert_no_pending_responses()

    assert [p.count for p in batch.pages] == [2, 2, 1]
    assert [f["findingArn"].rsplit("/", 1)[1] for f in _findings(batch)] == ["a", "b", "c", "d", "e"]
    assert batch.watermark == T2  # the max, found on the middle page, not the last one
    assert [p.max_updated_at for p in batch.pages] == [T1, T2, T1]
    for p in batch.pages:
        doc = json.loads(p.body)
        assert list(doc) == ["findings"]  # no nextToken/ResponseMetadata in the stored report
        assert doc["findings"][0]["updatedAt"] in (iso(T1), iso(T2))


def test_hook_maps_transport_and_credential_errors(
    moto: MotoInspector2, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json(f"http://127.0.0.1:{free_closed_port()}"))
    with pytest.raises(InspectorTransientError, match="unreachable") as down:
        InspectorHook().first_change(T1, client=InspectorHook().poll_client())
    assert isinstance(down.value, ScannerTransientError)

    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT", connection_json(moto.endpoint_url, password="wrong-secret")
    )
    with moto.require_auth(), pytest.raises(InspectorAuthError, match="refused the credentials") as auth:
        InspectorHook().list_findings(since=None)
    assert isinstance(auth.value, ScannerAuthError)
    assert "wrong-secret" not in str(auth.value) and "HTTP 403" in str(auth.value)


# --------------------------------------------------------------------------- trigger


def _trigger(since: datetime | None = T1, **kw: Any) -> InspectorFindingsTrigger:
    kw.setdefault("poke_interval", 0.2)
    kw.setdefault("timeout", 15)
    return InspectorFindingsTrigger(since=iso(since) if since else None, **kw)


def test_trigger_serializes_to_its_import_path_and_round_trips() -> None:
    path, kwargs = _trigger(aws_conn_id="aws_prod", region_name="eu-west-1").serialize()
    assert path == "selfheal.scanners.inspector.InspectorFindingsTrigger"
    assert InspectorFindingsTrigger(**json.loads(json.dumps(kwargs))).serialize() == (path, kwargs)


def test_trigger_with_an_unreadable_watermark_fails_with_a_clear_message() -> None:
    payload, _ = _run(InspectorFindingsTrigger(since="last tuesday", timeout=5))
    assert (payload["status"], payload["reason"]) == ("error", "failed")
    assert "watermark 'last tuesday': not an ISO 8601 timestamp" in payload["message"]


def test_trigger_fires_when_a_finding_appears_after_it_started(
    moto: MotoInspector2, caplog: pytest.LogCaptureFixture
) -> None:
    # The finding appears once the trigger has had two empty answers: a fixed delay raced the
    # trigger's start-up on a loaded machine (building the boto3 client alone took over 1 s).
    caplog.set_level(logging.INFO, logger="werkzeug")  # moto's server logs every request it answers

    def polls() -> int:
        return sum("/findings/list " in r.getMessage() for r in list(caplog.records))

    payload, elapsed = _run(
        _trigger(), seed_when=lambda: polls() >= 2, seed=lambda: moto.queue_results([_finding("late", T2)])
    )

    assert payload["status"] == "success", payload
    assert payload["finding_arn"].endswith("/late") and _instant(payload["updated_at"]) == T2
    assert payload["attempts"] >= 3  # it polled (empty answers) before the finding existed
    assert elapsed < 5
    query = moto.queries()[0]
    assert query["maxResults"] == 1  # one result is enough to know
    # strictly after the watermark: since + 1 ms on the wire
    assert query["filterCriteria"]["updatedAt"][0]["startInclusive"] == pytest.approx(
        (T1 + timedelta(milliseconds=1)).timestamp(), abs=1e-6
    )


def test_trigger_ignores_the_watermark_finding_itself_and_times_out_quietly(moto: MotoInspector2) -> None:
    moto.queue_results([_finding("boundary", T1)])  # what the last sync already ingested

    # 2 s, not 1: on a loaded CI machine building the boto3 client alone has taken 1.3 s.
    payload, elapsed = _run(_trigger(timeout=2.0, poke_interval=0.1))

    assert payload["status"] == "timeout", payload
    assert payload["attempts"] >= 2 and 2.0 <= elapsed < 8


def test_trigger_retries_5xx_and_throttling_inside_the_loop(moto: MotoInspector2, monkeypatch) -> None:
    script = [
        (500, "InternalServerException", "Internal failure"),
        (429, "ThrottlingException", "Rate exceeded"),
        (503, "ServiceUnavailableException", "Service unavailable"),
    ]
    moto.queue_results([_finding("after-errors", T2)])
    with ScriptedErrorsProxy(moto.endpoint_url, script) as proxy:
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json(proxy.endpoint_url))
        payload, _ = _run(_trigger(poke_interval=0.1))
    assert payload["status"] == "success", payload
    assert payload["attempts"] == 4 and proxy.requests == 4  # no hidden botocore retries either


def test_trigger_on_a_down_endpoint_retries_then_fails_at_the_timeout(monkeypatch) -> None:
    url = f"http://127.0.0.1:{free_closed_port()}"
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json(url))

    # 3 s, not 1: on a loaded CI machine building the boto3 client alone has taken 1.3 s.
    payload, elapsed = _run(_trigger(timeout=3.0, poke_interval=0.1))

    assert (payload["status"], payload["reason"]) == ("error", "unreachable"), payload
    assert payload["attempts"] >= 2 and 3.0 <= elapsed < 10
    assert "unreachable" in payload["message"] and url in payload["message"]


def test_trigger_fails_at_once_on_credentials_moto_rejects(moto: MotoInspector2, monkeypatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT", connection_json(moto.endpoint_url, password="wrong-secret")
    )
    with moto.require_auth():
        payload, elapsed = _run(_trigger(timeout=30))
    assert (payload["status"], payload["reason"], payload["attempts"]) == ("error", "auth", 1), payload
    assert elapsed < 5 and "InvalidClientTokenId" in payload["message"]
    assert "'aws_default'" in payload["message"] and "wrong-secret" not in payload["message"]


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (403, "UnrecognizedClientException", "auth"),  # what real AWS says for an unknown key
        (403, "InvalidSignatureException", "auth"),  # wrong secret
        (403, "AccessDeniedException", "auth"),  # key fine, no inspector2:ListFindings permission
        (400, "ValidationException", "failed"),  # a bad request will not get better by waiting
    ],
)
def test_trigger_stops_at_once_on_errors_waiting_cannot_fix(moto, monkeypatch, status, code, reason) -> None:
    with ScriptedErrorsProxy(moto.endpoint_url, [(status, code, "msg from aws")]) as proxy:
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json(proxy.endpoint_url))
        payload, _ = _run(_trigger(timeout=30))
    assert (payload["status"], payload["reason"], payload["attempts"]) == ("error", reason, 1), payload
    assert code in payload["message"] and f"HTTP {status}" in payload["message"]
