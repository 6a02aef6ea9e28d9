"""Async client for the registrations list endpoint: auth, envelope, errors, paging, batching.

It speaks HTTP and returns parsed records; it knows nothing of metrics or caching. Every
request passes the shared :class:`~exporter.budget.RequestBudget` first and is counted in
:class:`ApiStats`. Faults become :class:`CloudflareAPIError`, the one error type callers catch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode

import httpx
from pydantic import SecretStr, ValidationError

from exporter import __version__
from exporter.budget import RequestBudget
from exporter.models import Envelope, InvalidRecord, Registration, parse_registration

log = logging.getLogger(__name__)

USER_AGENT = (
    f"cloudflare-warp-exporter/{__version__} (+https://github.com/cloudflare-warp-exporter)"
)
IDS_PER_REQUEST = 100
PAGE_SIZE = 1000
"""Asked for when listing a whole account; the API may send fewer, and the cursor says so."""
MAX_BODY_BYTES = 16 * 1024 * 1024
"""A page of 100 records is about 100 KB; anything near this cap is not a registrations page."""
MAX_PAGES = 10_000
PARSE_SLICE = 25
"""Records parsed between two turns of the event loop, so fetchers are never kept waiting."""
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 2.0
_RATELIMIT_REMAINING = re.compile(r"(?:^|[;,\s])r=(\d+)")


class CloudflareAPIError(Exception):
    """A request or response that did not give usable data.

    ``status`` is the HTTP status (None when no response came), ``code`` and ``message`` the
    first Cloudflare error of the envelope when there was one, ``reason`` a short word for logs.
    """

    def __init__(
        self, reason: str, message: str, status: int | None = None, code: int | None = None
    ) -> None:
        self.reason = reason
        self.message = message
        self.status = status
        self.code = code
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [f"HTTP {self.status}" if self.status is not None else self.reason]
        if self.code is not None:
            parts.append(f"Cloudflare error {self.code}")
        return f"{', '.join(parts)}: {self.message}"


@dataclass
class ApiStats:
    """What the client counts, read by the renderer."""

    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    ratelimit_remaining: float | None = None
    budget_exhausted: int = 0


RegistrationSink = Callable[[Registration], None]
"""Receives each good record as its page arrives, so no listing is held whole in memory."""


@dataclass
class Listing:
    """The outcome of one listing besides the records: skipped records, requests made."""

    invalid: list[InvalidRecord] = field(default_factory=list)
    requests: int = 0


def rfc3339(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def batches(ids: Sequence[str], size: int = IDS_PER_REQUEST) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _backoff(attempt: int) -> float:
    """Full jitter over a capped exponential: spreads retries of many exporters apart."""
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))  # noqa: S311


def _parse_retry_after(value: str | None) -> float:
    if not value:
        return 60.0
    try:
        return max(0.0, float(value))
    except ValueError:
        return 60.0


class CloudflareClient:
    def __init__(
        self,
        *,
        base_url: str,
        token: SecretStr | None,
        budget: RequestBudget,
        stats: ApiStats | None = None,
        timeout_seconds: float = 10.0,
        max_concurrency: int = 4,
        max_retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._token = token
        self._budget = budget
        self._timeout = timeout_seconds
        self._max_retries = max_retries
        self._slots = asyncio.Semaphore(max_concurrency)
        self._queue_size = 2 * max_concurrency
        self.stats = stats if stats is not None else ApiStats()
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            transport=transport,
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=4),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def budget(self) -> RequestBudget:
        return self._budget

    async def list_registrations(
        self,
        account_id: str,
        *,
        ids: Sequence[str] | None = None,
        seen_after: float | None = None,
        deadline: float,
        sink: RegistrationSink,
    ) -> Listing:
        """All registrations of the account (``ids=None``) or the given ids, in id batches.

        Batches run concurrently, at most ``max_concurrency`` requests in flight across the
        client; each follows its cursor. Raises :class:`CloudflareAPIError` on the first fault.
        """
        base: list[tuple[str, str]] = [("status", "all"), ("include", "policy")]
        if seen_after is not None:
            base.append(("seen_after", rfc3339(seen_after)))
        pages: asyncio.Queue[list[object] | None] = asyncio.Queue(maxsize=self._queue_size)
        listing = Listing()
        parser = asyncio.create_task(self._parse_pages(pages, sink, listing))
        if ids is None:
            chains = [self._list_pages(account_id, base, PAGE_SIZE, deadline, pages)]
        else:
            chains = [
                self._list_pages(
                    account_id, base + [("id", i) for i in batch], len(batch), deadline, pages
                )
                for batch in batches(ids)
            ]
        tasks = [asyncio.ensure_future(chain) for chain in chains]
        fetching = asyncio.gather(*tasks)
        try:
            await asyncio.wait((fetching, parser), return_when=asyncio.FIRST_COMPLETED)
            if parser.done():  # it can only end early by failing: raise that, do not hang
                parser.result()
            listing.requests = sum(await fetching)
            await pages.put(None)
            await parser
        finally:
            for task in (*tasks, parser):
                task.cancel()
        return listing

    @staticmethod
    async def _parse_pages(
        pages: asyncio.Queue[list[object] | None], sink: RegistrationSink, listing: Listing
    ) -> None:
        """Parse pages while the fetchers go on fetching.

        Fetchers only read and decode a page, queue its records and send the next request; this
        task does the CPU work (validation, then ``sink``) in small slices between their turns,
        so the next request is not held back behind parsing and parsing overlaps the waits.
        """
        while (records := await pages.get()) is not None:
            now = time.time()
            for index, raw in enumerate(records, 1):
                parsed = parse_registration(raw, now)
                if isinstance(parsed, InvalidRecord):
                    listing.invalid.append(parsed)
                else:
                    sink(parsed)
                if index % PARSE_SLICE == 0:
                    await asyncio.sleep(0)

    async def _list_pages(
        self,
        account_id: str,
        params: list[tuple[str, str]],
        per_page: int,
        deadline: float,
        pages: asyncio.Queue[list[object] | None],
    ) -> int:
        """Follow one cursor chain, queueing each page's records; return the requests made."""
        path = f"/accounts/{account_id}/devices/registrations"
        cursors_seen: set[str] = set()
        cursor = ""
        for requests in range(1, MAX_PAGES + 1):
            query = [*params, ("per_page", str(per_page))]
            if cursor:
                query.append(("cursor", cursor))
            envelope = await self._get(account_id, "list", path, query, deadline)
            if not isinstance(envelope.result, list):
                kind = type(envelope.result).__name__
                raise CloudflareAPIError("bad_result", f"result is {kind}, expected a list", 200)
            await pages.put(envelope.result)
            info = envelope.result_info or {}
            next_cursor = info.get("cursor") or ""
            if not isinstance(next_cursor, str):
                raise CloudflareAPIError("bad_cursor", "result_info.cursor is not a string", 200)
            if not next_cursor:
                return requests
            if next_cursor in cursors_seen:
                raise CloudflareAPIError(
                    "repeated_cursor", f"cursor {next_cursor[:32]!r} repeated; paging stopped", 200
                )
            cursors_seen.add(next_cursor)
            cursor = next_cursor
        raise CloudflareAPIError("too_many_pages", f"more than {MAX_PAGES} pages; paging stopped")

    async def _get(
        self,
        account_id: str,
        endpoint: str,
        path: str,
        query: list[tuple[str, str]],
        deadline: float,
    ) -> Envelope:
        """One logical GET with retries of transient faults, inside ``deadline`` (monotonic)."""
        attempt = 0
        while True:
            try:
                return await self._attempt(account_id, endpoint, path, query, deadline)
            except CloudflareAPIError as exc:
                transient = exc.reason in ("timeout", "connection_error") or (
                    exc.status is not None and exc.status >= 500
                )
                delay = _backoff(attempt)
                if not transient or attempt >= self._max_retries:
                    raise
                if time.monotonic() + delay >= deadline - 0.05:
                    raise
                attempt += 1
                log.debug("retrying %s after %s (attempt %d)", path, exc, attempt)
                await asyncio.sleep(delay)

    async def _attempt(
        self,
        account_id: str,
        endpoint: str,
        path: str,
        query: list[tuple[str, str]],
        deadline: float,
    ) -> Envelope:
        if self._token is None:
            raise CloudflareAPIError("no_token", "no API token (set CLOUDFLARE_API_TOKEN)")
        async with self._slots:
            # Checked once a slot is ours: a 429 may have come while this request queued.
            paused = self._budget.paused_for()
            if paused > 0:
                raise CloudflareAPIError(
                    "rate_limited", f"Cloudflare asked to wait; {paused:.0f}s of the pause left"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CloudflareAPIError("timeout", "scrape deadline reached before the request")
            if not self._budget.try_acquire():
                self.stats.budget_exhausted += 1
                raise CloudflareAPIError(
                    "budget_exhausted",
                    f"client-side budget of {self._budget.limit} requests per 5 minutes is spent",
                )
            timeout = min(self._timeout, remaining)
            headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
            try:
                async with asyncio.timeout(timeout):
                    request = self._http.build_request(
                        "GET",
                        f"{path}?{urlencode(query)}",
                        headers=headers,
                        timeout=timeout,
                    )
                    response = await self._http.send(request, stream=True)
                    try:
                        body = await self._read_capped(response)
                    finally:
                        await response.aclose()
            except (TimeoutError, httpx.TimeoutException):
                self._count(account_id, endpoint, "timeout")
                raise CloudflareAPIError("timeout", f"no answer within {timeout:.1f}s") from None
            except httpx.HTTPError as exc:
                self._count(account_id, endpoint, "connection_error")
                message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                raise CloudflareAPIError("connection_error", message) from None
        self._count(account_id, endpoint, str(response.status_code))
        self._note_rate_limit(response)
        return self._envelope(response, body)

    async def _read_capped(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise CloudflareAPIError(
                "body_too_large",
                f"body of {declared} bytes exceeds {MAX_BODY_BYTES}",
                response.status_code,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise CloudflareAPIError(
                    "body_too_large", f"body exceeds {MAX_BODY_BYTES} bytes", response.status_code
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _count(self, account_id: str, endpoint: str, code: str) -> None:
        self.stats.requests[(account_id, endpoint, code)] += 1

    def _note_rate_limit(self, response: httpx.Response) -> None:
        header = response.headers.get("ratelimit")
        if header:
            match = _RATELIMIT_REMAINING.search(header)
            if match:
                self.stats.ratelimit_remaining = float(match.group(1))
        if response.status_code == 429:
            self._budget.pause_for(_parse_retry_after(response.headers.get("retry-after")))

    @staticmethod
    def _envelope(response: httpx.Response, body: bytes) -> Envelope:
        status = response.status_code
        try:
            data = json.loads(body)
            envelope = Envelope.model_validate(data)
        except (ValueError, ValidationError):
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            if status >= 400:
                message = f"non-JSON error body ({kind})"
                raise CloudflareAPIError("http_error", message, status) from None
            raise CloudflareAPIError(
                "bad_body",
                f"body is not a Cloudflare JSON envelope ({kind}, {len(body)} bytes)",
                status,
            ) from None
        if status >= 400 or not envelope.success:
            first = envelope.errors[0] if envelope.errors else None
            message = first.message if first and first.message else "request failed"
            raise CloudflareAPIError("api_error", message, status, first.code if first else None)
        return envelope
