"""AWS Inspector2 connector: hook, trigger and deferrable sensor for "new or changed findings".

Inspector2 scans continuously; there is no scan to start. We poll ``ListFindings``
filtered on ``updatedAt`` after a stored watermark (the newest ``updatedAt`` already
ingested) and on status ACTIVE and CLOSED (a CLOSED finding is how Inspector says
"fixed", which drives auto-resolve; SUPPRESSED ones were silenced by a human in AWS).

Connection ``aws_default`` (conn_type ``aws``) through the Amazon provider's
``AwsBaseHook``: keys as login/password (or any provider credential method), extras
``region_name`` and ``endpoint_url`` (global) or ``service_config.inspector2.endpoint_url``
(per service; wins over the global one), both read by provider 9.39's
``AwsConnectionWrapper``. Tests point ``endpoint_url`` at moto in server mode.

Wire facts this module relies on (botocore 1.44 model ``inspector2/2020-06-08``):
``ListFindings`` is POST ``/findings/list`` (rest-json), ``maxResults`` 1..100,
``nextToken`` pagination, timestamps travel as epoch seconds and boto3 turns them into
datetimes. ``filterCriteria.updatedAt`` is a list of ``{startInclusive, endInclusive}``
and ``findingStatus`` a list of ``{comparison: EQUALS, value}`` ORed together.

Watermark semantics: the hook asks for ``updatedAt >= watermark`` (inclusive, so a
finding updated in the same millisecond as the last one ingested is never lost; the
ingest is idempotent so seeing the boundary finding twice is harmless). The trigger
asks for ``updatedAt >= watermark + 1 ms`` (Inspector's timestamps carry milliseconds)
and double-checks ``updatedAt > watermark`` itself, otherwise the boundary finding would
fire it forever. The hook also drops, client side, anything the server returned outside
the filter: a stale row would otherwise move the watermark backwards or ingest a
SUPPRESSED finding.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
)
from airflow.triggers.base import BaseTrigger, TriggerEvent
from botocore import exceptions as botocore_exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from selfheal.scanners.errors import ScannerAuthError, ScannerError, ScannerTransientError

SERVICE = "inspector2"
STATUSES: tuple[str, ...] = ("ACTIVE", "CLOSED")
_VALID_STATUSES = frozenset({"ACTIVE", "SUPPRESSED", "CLOSED"})
PAGE_SIZE = 100  # the API's maximum maxResults: fewest round trips
STRICT_STEP = timedelta(milliseconds=1)  # Inspector2 timestamps have millisecond precision
# The trigger loop owns retrying: botocore must not retry behind its back (a down endpoint
# would otherwise cost minutes of hidden backoff per poke), and a poll must not hang.
POLL_CLIENT_CONFIG = Config(
    retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=20
)
# Error codes AWS (and moto) use for credentials that are wrong, expired or not allowed.
AUTH_ERROR_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "AccessDeniedException",
        "AccessDenied",
        "ExpiredToken",
        "ExpiredTokenException",
        "AuthFailure",
        "UnauthorizedOperation",
    }
)
TRANSIENT_ERROR_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "InternalServerException",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


class InspectorError(ScannerError):
    """An Inspector2 call failed for a reason waiting will not fix (bad request, bad config)."""


class InspectorAuthError(InspectorError, ScannerAuthError):
    """AWS refused the connection's credentials (unknown key, bad signature, access denied)."""


class InspectorTransientError(InspectorError, ScannerTransientError):
    """Inspector2 was unreachable, throttled us or answered 5xx: worth polling again."""


# --------------------------------------------------------------------------- watermark


class WatermarkStore(Protocol):
    """Where the newest ingested ``updatedAt`` lives between runs (the lead keeps it in Postgres)."""

    def get(self, key: str) -> datetime | None: ...

    def set(self, key: str, value: datetime) -> None: ...


class InMemoryWatermarkStore:
    """A dict-backed WatermarkStore for tests and one-off runs (lost when the process ends)."""

    def __init__(self, initial: dict[str, datetime] | None = None) -> None:
        self._values: dict[str, datetime] = dict(initial or {})

    def get(self, key: str) -> datetime | None:
        return self._values.get(key)

    def set(self, key: str, value: datetime) -> None:
        self._values[key] = value


def watermark_key(aws_conn_id: str | None, region_name: str | None) -> str:
    """The store key for one account/region feed: findings of two regions never share a watermark."""
    return f"inspector2:{aws_conn_id or 'default-credentials'}:{region_name or 'default-region'}"


def to_utc(value: datetime) -> datetime:
    """Aware UTC datetime (boto3 hands out tzlocal() datetimes; naive input is taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_since(value: str | datetime | None) -> datetime | None:
    """A watermark from a template or XCom: ISO 8601 string, datetime, or empty/None for "no watermark"."""
    if value is None or isinstance(value, datetime):
        return to_utc(value) if value else None
    text = str(value).strip()
    if text in ("", "None", "null"):
        return None
    try:
        return to_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise InspectorError(f"inspector2 watermark {text[:80]!r}: not an ISO 8601 timestamp") from None


def iso(value: datetime) -> str:
    """The ISO 8601 text the AWS CLI writes for a timestamp, normalized to UTC."""
    return to_utc(value).isoformat(timespec="microseconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _check_statuses(statuses: Iterable[str]) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(s.upper() for s in statuses))
    bad = [s for s in out if s not in _VALID_STATUSES]
    if bad or not out:
        raise InspectorError(
            f"inspector2 statuses {list(statuses)!r}: expected some of {sorted(_VALID_STATUSES)}"
        )
    return out


def filter_criteria(since: datetime | None, statuses: Sequence[str] = STATUSES) -> dict[str, Any]:
    """``filterCriteria`` for findings in ``statuses`` updated at or after ``since`` (None: all)."""
    criteria: dict[str, Any] = {
        "findingStatus": [{"comparison": "EQUALS", "value": s} for s in _check_statuses(statuses)]
    }
    if since is not None:
        criteria["updatedAt"] = [{"startInclusive": to_utc(since)}]
    return criteria


# --------------------------------------------------------------------------- errors


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def translate_error(exc: BaseException, conn_id: str | None) -> InspectorError:
    """Map a botocore exception to transient / auth / other, with a one-line message (no secrets)."""
    where = f"inspector2 (connection {conn_id!r})"
    if isinstance(exc, InspectorError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        what = f"HTTP {status} {code}: {_one_line(err.get('Message', ''))}"
        if code in AUTH_ERROR_CODES or status in (401, 403):
            return InspectorAuthError(f"{where} refused the credentials: {what}")
        if code in TRANSIENT_ERROR_CODES or status == 429 or status >= 500:
            return InspectorTransientError(f"{where} is throttling or failing: {what}")
        return InspectorError(f"{where} rejected ListFindings: {what}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return InspectorAuthError(f"{where}: no usable AWS credentials ({_one_line(str(exc))})")
    if isinstance(exc, botocore_exceptions.ConnectionError | HTTPClientError):
        # EndpointConnectionError (refused), Connect/ReadTimeoutError, ConnectionClosedError...
        return InspectorTransientError(f"{where} is unreachable: {_one_line(str(exc))}")
    if isinstance(exc, BotoCoreError):
        return InspectorError(f"{where}: {_one_line(str(exc))}")
    return InspectorError(f"{where}: {type(exc).__name__}: {_one_line(str(exc))}")


# --------------------------------------------------------------------------- hook


@dataclass(frozen=True)
class FindingsPage:
    """One ListFindings page as JSON bytes in the real API shape (``{"findings": [...]}``, ISO times)."""

    body: bytes
    count: int
    max_updated_at: datetime | None


@dataclass(frozen=True)
class FindingsBatch:
    """What one sync read: the pages, the watermark it started from and the one to store next."""

    pages: tuple[FindingsPage, ...]
    since: datetime | None
    watermark: datetime | None  # max updatedAt seen, never older than `since`

    @property
    def count(self) -> int:
        return sum(p.count for p in self.pages)

    @property
    def advanced(self) -> bool:
        return self.watermark is not None and (self.since is None or self.watermark > self.since)


@dataclass(frozen=True)
class SyncResult:
    """What ``InspectorHook.sync`` did: pages and findings handed over, watermark before and after."""

    key: str
    since: datetime | None
    watermark: datetime | None
    pages: int
    findings: int

    @property
    def advanced(self) -> bool:
        return self.watermark is not None and (self.since is None or self.watermark > self.since)


@dataclass(frozen=True)
class Change:
    """The first finding the trigger saw updated after the watermark."""

    finding_arn: str
    updated_at: datetime
    status: str


def _updated_at(finding: dict[str, Any]) -> datetime | None:
    value = finding.get("updatedAt")
    if isinstance(value, datetime):
        return to_utc(value)
    if isinstance(value, str):  # not from boto3, but accept the ISO text the CLI writes
        try:
            return parse_since(value)
        except InspectorError:
            return None
    return None


class InspectorHook(AwsBaseHook):
    """Reads Inspector2 findings changed since a watermark, page by page, through a boto3 paginator."""

    hook_name = "AWS Inspector2 (selfheal)"

    def __init__(
        self,
        aws_conn_id: str | None = AwsBaseHook.default_conn_name,
        region_name: str | None = None,
        config: Config | dict[str, Any] | None = None,
        verify: bool | str | None = None,
    ) -> None:
        super().__init__(
            aws_conn_id=aws_conn_id,
            region_name=region_name,
            client_type=SERVICE,
            config=config,
            verify=verify,
        )

    def get_conn(self) -> Any:
        """The cached boto3 ``inspector2`` client (botocore's own retries apply: a task may wait)."""
        return self.conn

    def poll_client(self) -> Any:
        """A separate client for the trigger: no botocore retries, short timeouts (the loop retries)."""
        return self.get_client_type(
            region_name=self.region_name, config=self.config.merge(POLL_CLIENT_CONFIG)
        )

    def _wanted(self, finding: dict[str, Any], since: datetime | None, statuses: frozenset[str]) -> bool:
        status = finding.get("status")
        if status is not None and status not in statuses:
            return False
        updated = _updated_at(finding)
        return not (since is not None and updated is not None and updated < since)

    def iter_pages(
        self,
        since: datetime | None,
        statuses: Sequence[str] = STATUSES,
        *,
        page_size: int = PAGE_SIZE,
        client: Any = None,
    ) -> Iterator[FindingsPage]:
        """Yield each ListFindings page of findings in ``statuses`` updated at or after ``since``."""
        since = to_utc(since) if since else None
        statuses = _check_statuses(statuses)
        wanted = frozenset(statuses)
        if not 1 <= page_size <= PAGE_SIZE:
            raise InspectorError(f"inspector2 page_size {page_size}: must be 1..{PAGE_SIZE}")
        paginator = (client or self.get_conn()).get_paginator("list_findings")
        pages = paginator.paginate(
            filterCriteria=filter_criteria(since, statuses), PaginationConfig={"PageSize": page_size}
        )
        try:
            for page in pages:
                raw = page.get("findings", [])
                kept = [f for f in raw if self._wanted(f, since, wanted)]
                if len(kept) != len(raw):
                    self.log.warning(
                        "inspector2 returned %d finding(s) outside the filter "
                        "(updatedAt >= %s, status in %s); dropped",
                        len(raw) - len(kept),
                        since,
                        statuses,
                    )
                stamps = [u for u in map(_updated_at, kept) if u is not None]
                body = json.dumps({"findings": kept}, default=_json_default, ensure_ascii=False).encode()
                yield FindingsPage(body=body, count=len(kept), max_updated_at=max(stamps, default=None))
        except (BotoCoreError, ClientError) as exc:
            raise translate_error(exc, self.aws_conn_id) from exc

    def list_findings(
        self, since: datetime | None, statuses: Sequence[str] = STATUSES, *, page_size: int = PAGE_SIZE
    ) -> FindingsBatch:
        """All pages changed since ``since`` plus the new watermark (max ``updatedAt`` seen)."""
        since = to_utc(since) if since else None
        pages = tuple(self.iter_pages(since, statuses, page_size=page_size))
        stamps = [p.max_updated_at for p in pages if p.max_updated_at is not None]
        if since is not None:
            stamps.append(since)
        return FindingsBatch(pages=pages, since=since, watermark=max(stamps, default=None))

    def sync(
        self,
        store: WatermarkStore,
        handle_page: Callable[[FindingsPage], object],
        *,
        key: str | None = None,
        statuses: Sequence[str] = STATUSES,
        page_size: int = PAGE_SIZE,
    ) -> SyncResult:
        """Hand every page changed since the stored watermark to ``handle_page``, then advance the watermark.

        Pages stream (one in memory at a time). The watermark moves only after every page
        was handled: a failure half way leaves it where it was and the retry re-reads
        (the ingest is idempotent, so that is harmless).
        """
        key = key or watermark_key(self.aws_conn_id, self.region_name)
        stored = store.get(key)
        since = to_utc(stored) if stored else None
        newest, pages, findings = since, 0, 0
        for page in self.iter_pages(since, statuses, page_size=page_size):
            handle_page(page)
            pages += 1
            findings += page.count
            if page.max_updated_at is not None and (newest is None or page.max_updated_at > newest):
                newest = page.max_updated_at
        result = SyncResult(key=key, since=since, watermark=newest, pages=pages, findings=findings)
        if result.advanced and newest is not None:
            store.set(key, newest)
        return result

    def first_change(
        self, since: datetime | None, statuses: Sequence[str] = STATUSES, *, client: Any = None
    ) -> Change | None:
        """One ListFindings call (maxResults 1): a finding updated strictly after ``since``, or None."""
        since = to_utc(since) if since else None
        criteria = filter_criteria(since + STRICT_STEP if since else None, statuses)
        wanted = frozenset(_check_statuses(statuses))
        try:
            response = (client or self.get_conn()).list_findings(filterCriteria=criteria, maxResults=1)
        except (BotoCoreError, ClientError) as exc:
            raise translate_error(exc, self.aws_conn_id) from exc
        for finding in response.get("findings", []):
            updated = _updated_at(finding)
            if updated is None or finding.get("status", "ACTIVE") not in wanted:
                continue
            if since is None or updated > since:
                return Change(str(finding.get("findingArn", "")), updated, str(finding.get("status", "")))
        return None


# --------------------------------------------------------------------------- trigger


class InspectorFindingsTrigger(BaseTrigger):
    """Fires when Inspector2 has a finding updated after ``since``; polls until ``timeout``.

    Events (``payload["status"]``): ``success`` (with ``finding_arn``, ``updated_at``),
    ``timeout`` (nothing changed: not an error), ``error`` with ``reason`` ``auth``
    (immediately, credentials refused), ``unreachable`` (transient errors until the
    deadline) or ``failed`` (any other error, immediately).
    """

    def __init__(
        self,
        *,
        aws_conn_id: str | None = AwsBaseHook.default_conn_name,
        region_name: str | None = None,
        since: str | None = None,
        statuses: Sequence[str] = STATUSES,
        poke_interval: float = 300.0,
        timeout: float = 3600.0,
    ) -> None:
        super().__init__()
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.since = since
        self.statuses = list(statuses)
        self.poke_interval = float(poke_interval)
        self.timeout = float(timeout)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "since": self.since,
                "statuses": self.statuses,
                "poke_interval": self.poke_interval,
                "timeout": self.timeout,
            },
        )

    def _payload(self, status: str, **extra: Any) -> dict[str, Any]:
        return {"status": status, "since": self.since, **extra}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = time.monotonic() + self.timeout
        attempts = 0
        last_error: str | None = None
        try:
            since = parse_since(self.since)
            hook = InspectorHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
            # Building the client reads the Airflow connection (a sync SDK call): off the event loop.
            client = await asyncio.to_thread(hook.poll_client)
        except Exception as exc:  # noqa: BLE001 - any setup failure (no connection, bad since) ends the wait
            err = translate_error(exc, self.aws_conn_id)
            yield TriggerEvent(self._payload("error", reason="failed", message=str(err), attempts=attempts))
            return
        while True:
            attempts += 1
            try:
                change = await asyncio.to_thread(hook.first_change, since, self.statuses, client=client)
            except InspectorTransientError as exc:
                last_error = str(exc)
                self.log.warning("inspector2 poll %d failed, will retry: %s", attempts, last_error)
            except InspectorError as exc:
                reason = "auth" if isinstance(exc, InspectorAuthError) else "failed"
                yield TriggerEvent(self._payload("error", reason=reason, message=str(exc), attempts=attempts))
                return
            else:
                last_error = None
                if change is not None:
                    yield TriggerEvent(
                        self._payload(
                            "success",
                            finding_arn=change.finding_arn,
                            updated_at=iso(change.updated_at),
                            finding_status=change.status,
                            attempts=attempts,
                        )
                    )
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if last_error is not None:
                    message = f"gave up after {attempts} attempt(s) in {self.timeout:g}s: {last_error}"
                    yield TriggerEvent(
                        self._payload("error", reason="unreachable", message=message, attempts=attempts)
                    )
                else:
                    yield TriggerEvent(self._payload("timeout", attempts=attempts, timeout=self.timeout))
                return
            await asyncio.sleep(min(self.poke_interval, remaining))


# --------------------------------------------------------------------------- sensor


class InspectorFindingsSensor(BaseSensorOperator):
    """Wait (deferred: no worker slot held) until Inspector2 has findings changed since the watermark.

    The watermark is ``since`` (templated ISO 8601; empty means none) or, when that is
    unset, ``watermark_store.get(watermark_key)``. Outcomes:

    * a change: success, XCom ``{"since", "finding_arn", "updated_at", ...}``;
    * nothing changed within ``timeout``: **skipped** (a quiet account is not an error,
      and the downstream ingest is skipped with it);
    * credentials refused: failed at once with ``AirflowFailException`` (no task retries);
    * endpoint unreachable/throttled/5xx for the whole ``timeout``: failed (task retries apply);
    * any other API error: failed at once.
    """

    template_fields: Sequence[str] = ("since",)
    ui_color = "#f5e6d3"

    def __init__(
        self,
        *,
        aws_conn_id: str | None = AwsBaseHook.default_conn_name,
        region_name: str | None = None,
        since: str | datetime | None = None,
        watermark_store: WatermarkStore | None = None,
        watermark_key: str | None = None,
        statuses: Sequence[str] = STATUSES,
        deferrable: bool = True,
        poke_interval: timedelta | float = 300,
        timeout: timedelta | float = 3600,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.since = since
        self.watermark_store = watermark_store
        self.watermark_key = watermark_key
        self.statuses = list(_check_statuses(statuses))
        self.deferrable = deferrable
        self._last_error: str | None = None
        self._resolved_since: datetime | None = None

    def _since(self) -> datetime | None:
        since = parse_since(self.since)
        if since is None and self.watermark_store is not None:
            key = self.watermark_key or watermark_key(self.aws_conn_id, self.region_name)
            stored = self.watermark_store.get(key)
            since = to_utc(stored) if stored else None
        return since

    def execute(self, context: Any) -> Any:
        self._resolved_since = self._since()
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout:
                if self._last_error is not None:
                    raise AirflowException(
                        f"inspector2 unreachable until the timeout: {self._last_error}"
                    ) from None
                raise AirflowSkipException(self._quiet_message()) from None
        since_text = iso(self._resolved_since) if self._resolved_since else "-"
        self.log.info("deferring: waiting for inspector2 findings updated after %s", since_text)
        self.defer(
            trigger=InspectorFindingsTrigger(
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                since=iso(self._resolved_since) if self._resolved_since else None,
                statuses=self.statuses,
                poke_interval=self.poke_interval,
                timeout=self.timeout,
            ),
            method_name="execute_complete",
            # The trigger ends itself at `timeout`; this is only a backstop for a wedged triggerer.
            timeout=timedelta(seconds=self.timeout + max(60.0, self.poke_interval)),
        )

    def _quiet_message(self) -> str:
        since = iso(self._resolved_since) if self._resolved_since else "the beginning"
        return f"no new or changed inspector2 findings since {since} within {self.timeout:g}s"

    def poke(self, context: Any) -> bool:
        hook = InspectorHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        try:
            change = hook.first_change(self._resolved_since, self.statuses, client=hook.poll_client())
        except InspectorTransientError as exc:
            self._last_error = str(exc)
            self.log.warning("inspector2 poke failed, will retry: %s", exc)
            return False
        except InspectorAuthError as exc:
            raise AirflowFailException(str(exc)) from exc
        self._last_error = None
        if change is not None:
            self.log.info("inspector2 finding %s changed at %s", change.finding_arn, iso(change.updated_at))
        return change is not None

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        event = event or {}
        status = event.get("status")
        if status == "success":
            self.log.info(
                "inspector2 finding %s changed at %s", event.get("finding_arn"), event.get("updated_at")
            )
            return event
        if status == "timeout":
            self._resolved_since = parse_since(event.get("since"))
            raise AirflowSkipException(self._quiet_message())
        message = str(event.get("message") or f"unexpected trigger event {event!r}")
        if event.get("reason") == "auth":
            raise AirflowFailException(message)
        raise AirflowException(message)
