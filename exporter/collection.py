"""What to fetch per account, when, and what to keep when fetching fails.

One refresh runs at a time (single flight): concurrent scrapes wait for the same one. Data
younger than ``collection.min_interval_seconds`` is reused. A failed refresh keeps the last
good registrations for ``collection.max_stale_seconds`` so a short API outage does not make
every stale-device alert resolve and fire again. Discovered accounts are refreshed
incrementally (``seen_after``) between full listings every ``collection.full_refresh_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from exporter.cloudflare import IDS_PER_REQUEST, CloudflareAPIError, CloudflareClient, Listing
from exporter.config import AccountConfig, Config
from exporter.exposition import AccountView, CompiledRegistration, Compiler, FleetKey
from exporter.models import InvalidRecord, Registration

log = logging.getLogger(__name__)

SEEN_AFTER_OVERLAP_SECONDS = 120.0
"""An incremental listing asks for records seen since the last fetch began, minus this, so a
record whose last_seen_at lags Cloudflare's clock is not missed."""
REFRESH_GRACE_SECONDS = 0.1
"""A refresh stops at the scrape's deadline; the scrape waits this much longer for it, so a
request that timed out at the deadline is told (``up 0``) in the same answer."""


@dataclass
class AccountState:
    """One account's last good data and health, carried across refreshes (and reloads)."""

    config: AccountConfig
    entries: dict[str, CompiledRegistration] = field(default_factory=dict)
    has_data: bool = False
    up: bool = False
    refresh_seconds: float | None = None
    last_success: float | None = None
    last_success_monotonic: float | None = None
    last_fetch_started: float | None = None
    last_full_monotonic: float | None = None
    pages_last_time: int = 1
    invalid: Counter[str] = field(default_factory=Counter)
    ordered: tuple[CompiledRegistration, ...] = ()
    fleet_counts: tuple[tuple[FleetKey, int], ...] = ()
    active_last_seen: tuple[float, ...] = ()

    def publish(self) -> None:
        """Recompute the sorted views the renderer reads, after ``entries`` changed."""
        self.ordered = tuple(self.entries[k] for k in sorted(self.entries))
        counts = Counter(entry.fleet_key for entry in self.ordered)
        self.fleet_counts = tuple(sorted(counts.items()))
        self.active_last_seen = tuple(sorted(e.last_seen for e in self.ordered if e.active))

    def drop(self) -> None:
        self.entries = {}
        self.has_data = False
        self.publish()


class Collection:
    def __init__(
        self,
        config: Config,
        client: CloudflareClient,
        compiler: Compiler,
        previous: Collection | None = None,
    ) -> None:
        self._config = config
        self._client = client
        self._compiler = compiler
        keep = previous is not None and previous._compiler.policy == compiler.policy
        old = previous.accounts if previous is not None and keep else {}
        self.accounts: dict[str, AccountState] = {}
        for account in config.accounts:
            state = old.get(account.account_id) or AccountState(account)
            state.config = account
            self.accounts[account.account_id] = state
        self._task: asyncio.Task[None] | None = None
        self._last_started: float | None = None

    @property
    def client(self) -> CloudflareClient:
        return self._client

    async def ensure_fresh(self, timeout: float) -> None:
        """Refresh unless the data is young enough; wait at most ``timeout`` seconds for it.

        A refresh that outlives the wait goes on in the background and the caller serves what
        is there now; the next scrape picks up its result.
        """
        now = time.monotonic()
        interval = self._config.collection.min_interval_seconds
        due = self._last_started is None or now - self._last_started >= interval
        if self._task is None and due:
            self._last_started = now
            self._task = asyncio.create_task(self._refresh_all(now + timeout))
            self._task.add_done_callback(self._refresh_done)
        if self._task is not None:
            # Not wait_for(shield(...)): a refresh cancelled by a reload or shutdown must not
            # cancel the scrapes waiting on it; they answer with the data there is.
            done, _ = await asyncio.wait({self._task}, timeout=timeout + REFRESH_GRACE_SECONDS)
            if not done:
                log.warning("refresh still running after %.1fs; serving the data there is", timeout)
        self._expire_stale()

    def _refresh_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("refresh crashed: %r", task.exception())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _refresh_all(self, deadline: float) -> None:
        await asyncio.gather(*(self._refresh(s, deadline) for s in self.accounts.values()))

    def _expire_stale(self) -> None:
        limit = self._config.collection.max_stale_seconds
        now = time.monotonic()
        for state in self.accounts.values():
            fetched = state.last_success_monotonic
            if state.has_data and not state.up and fetched is not None and now - fetched > limit:
                log.warning(
                    "account_id=%s: dropping registrations last fetched %.0fs ago "
                    "(collection.max_stale_seconds=%g)",
                    state.config.account_id,
                    now - fetched,
                    limit,
                )
                state.drop()

    def _estimated_requests(self, state: AccountState) -> int:
        if state.config.discover:
            return max(1, state.pages_last_time)
        return math.ceil(len(state.config.registrations) / IDS_PER_REQUEST)

    def _incremental(self, state: AccountState, started: float) -> bool:
        full_every = self._config.collection.full_refresh_seconds
        return (
            state.config.discover
            and state.up
            and full_every > 0
            and state.last_full_monotonic is not None
            and started - state.last_full_monotonic < full_every
        )

    async def _refresh(self, state: AccountState, deadline: float) -> None:
        account = state.config
        started = time.monotonic()
        wall_started = time.time()
        incremental = self._incremental(state, started)
        budget = self._client.budget
        # A 429 pause is not our budget: the client refuses those requests as rate_limited.
        if not incremental and budget.available() < self._estimated_requests(state):
            self._client.stats.budget_exhausted += 1
            self._failed(state, started, "API budget (api.max_requests_per_5m) is spent for now")
            return
        fresh: dict[str, CompiledRegistration] = dict(state.entries) if incremental else {}
        wanted = None if account.discover else set(account.registrations)
        previous = state.entries

        def keep(reg: Registration) -> None:
            if wanted is None or reg.id in wanted:
                fresh[reg.id] = self._compiler.compile(
                    account.account_id, reg, previous.get(reg.id)
                )

        seen_after = None
        if incremental and state.last_fetch_started is not None:
            seen_after = state.last_fetch_started - SEEN_AFTER_OVERLAP_SECONDS
        try:
            listing = await self._client.list_registrations(
                account.account_id,
                ids=None if account.discover else account.registrations,
                seen_after=seen_after,
                deadline=deadline,
                sink=keep,
            )
        except CloudflareAPIError as exc:
            self._failed(state, started, str(exc))
            return
        self._succeeded(
            state, fresh, listing, started=started, wall_started=wall_started, full=not incremental
        )

    def _succeeded(
        self,
        state: AccountState,
        fresh: dict[str, CompiledRegistration],
        listing: Listing,
        *,
        started: float,
        wall_started: float,
        full: bool,
    ) -> None:
        state.entries = fresh
        state.has_data = True
        state.up = True
        state.refresh_seconds = time.monotonic() - started
        state.last_success = time.time()
        state.last_success_monotonic = time.monotonic()
        state.last_fetch_started = wall_started
        if full:
            state.last_full_monotonic = started
            state.pages_last_time = listing.requests
        state.publish()
        if listing.invalid:
            self._note_invalid(state, listing.invalid)
        log.debug(
            "account_id=%s refreshed: %d registrations, %d requests, %.3fs%s",
            state.config.account_id,
            len(fresh),
            listing.requests,
            state.refresh_seconds,
            "" if full else " (incremental)",
        )

    @staticmethod
    def _note_invalid(state: AccountState, invalid: list[InvalidRecord]) -> None:
        reasons = Counter(record.reason for record in invalid)
        state.invalid.update(reasons)
        first = invalid[0]
        log.warning(
            "account_id=%s: skipped %d invalid record(s) (%s); first: id=%s %s",
            state.config.account_id,
            len(invalid),
            ", ".join(f"{reason}={count}" for reason, count in sorted(reasons.items())),
            first.registration_id or "?",
            first.detail,
        )

    def _failed(self, state: AccountState, started: float, why: str) -> None:
        state.up = False
        state.refresh_seconds = time.monotonic() - started
        log.error("account_id=%s refresh failed: %s", state.config.account_id, why)

    def views(self) -> list[AccountView]:
        """The accounts as the renderer reads them, with the API counts as of now."""
        requests = self._client.stats.requests
        out = []
        for account_id, state in self.accounts.items():
            configured = state.config.registrations
            found = [(rid, rid in state.entries) for rid in configured] if state.has_data else []
            out.append(
                AccountView(
                    account_id=account_id,
                    registrations=state.ordered,
                    found=found,
                    fleet_counts=state.fleet_counts,
                    active_last_seen=state.active_last_seen,
                    up=state.up,
                    refresh_seconds=state.refresh_seconds,
                    last_success=state.last_success,
                    requests=sorted(
                        (endpoint, code, count)
                        for (acct, endpoint, code), count in requests.items()
                        if acct == account_id
                    ),
                    invalid=sorted(state.invalid.items()),
                )
            )
        return out

    def any_failed(self) -> bool:
        return any(not state.up for state in self.accounts.values())
