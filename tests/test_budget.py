"""The API budget, Cloudflare's 429s, and retries inside the scrape deadline (issue 3).

Each test runs the exporter in process behind its real HTTP server and the simulated API in a
thread; the numbers checked are the requests the simulator saw and the exposition's counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest

from exporter.config import parse_config, resolve_settings
from exporter.simulator import SimulatedCloudflare
from tests.conftest import ACCOUNT, OTHER_ACCOUNT, TOKEN, free_port
from tests.resilience_harness import (
    Harness,
    Samples,
    error_lines,
    run,
    series,
    settings_for,
    start_simulator,
    value,
)

FLEET = 30


@pytest.fixture
def sim() -> Iterator[SimulatedCloudflare]:
    """Two accounts of 30 records each; one list request lists a whole account."""
    simulator = start_simulator({ACCOUNT: FLEET, OTHER_ACCOUNT: FLEET})
    yield simulator
    simulator.stop_thread()


def two_accounts(**api: object) -> dict[str, object]:
    return {
        "api": api,
        "collection": {"min_interval_seconds": 0},
        "accounts": [
            {"account_id": ACCOUNT, "discover": True},
            {"account_id": OTHER_ACCOUNT, "discover": True},
        ],
    }


def one_account(**api: object) -> dict[str, object]:
    return {
        "api": api,
        "collection": {"min_interval_seconds": 0},
        "accounts": [{"account_id": ACCOUNT, "discover": True}],
    }


def requests_by_code(parsed: Samples, code: str) -> float:
    return sum(
        v
        for (name, labels), v in parsed.items()
        if name == "cloudflare_warp_api_requests_total" and ("code", code) in labels
    )


def infos(parsed: Samples, account: str) -> int:
    return len(series(parsed, "cloudflare_warp_registration_info", account_id=account))


def test_500_burst_scrapes_never_exceed_the_budget(sim: SimulatedCloudflare) -> None:
    settings = settings_for(sim, two_accounts(max_requests_per_5m=20))

    async def main() -> Samples:
        async with Harness(settings) as h:

            async def worker() -> None:
                for _ in range(50):
                    await h.scrape()

            await asyncio.gather(*(worker() for _ in range(10)))
            _, parsed = await h.scrape()
            return parsed

    parsed = run(main())
    sent = len(sim.requests)
    print(f"\n500 burst scrapes (+1): {sent} API requests, budget 20")
    assert 2 <= sent <= 20
    assert value(parsed, "cloudflare_warp_api_budget_exhausted_total")
    assert requests_by_code(parsed, "200") == sent
    # The last good data is still served, flagged as not fresh.
    for account in (ACCOUNT, OTHER_ACCOUNT):
        assert infos(parsed, account) == FLEET
        assert value(parsed, "cloudflare_warp_up", account_id=account) == 0


def test_429_pauses_every_account_until_retry_after(
    sim: SimulatedCloudflare, caplog: pytest.LogCaptureFixture
) -> None:
    sim.retry_after = 1
    settings = settings_for(sim, two_accounts(max_concurrency=1))

    async def main() -> None:
        async with Harness(settings) as h:
            _, parsed = await h.scrape()
            assert len(sim.requests) == 2
            remaining = value(parsed, "cloudflare_warp_api_ratelimit_remaining")
            assert remaining == 1200 - 2

            sim.set_fault("rate_limited", times=1)
            paused_at = time.monotonic()
            _, parsed = await h.scrape()
            # The 429 stops the other account's request too, though it shares no account.
            assert len(sim.requests) == 3
            assert requests_by_code(parsed, "429") == 1
            for _ in range(5):
                _, parsed = await h.scrape()
            assert time.monotonic() - paused_at < 1.0, "test too slow to check the pause"
            assert len(sim.requests) == 3
            for account in (ACCOUNT, OTHER_ACCOUNT):
                assert value(parsed, "cloudflare_warp_up", account_id=account) == 0
                assert infos(parsed, account) == FLEET
            # A pause is not the client-side budget running out, and is logged as what it is.
            assert value(parsed, "cloudflare_warp_api_budget_exhausted_total") == 0
            paused = [m for m in error_lines(caplog.records) if "Cloudflare asked to wait" in m]
            assert len(paused) == 1 + 2 * 5  # the other account's queued request, then 5 scrapes
            assert paused[0].endswith(
                "refresh failed: rate_limited: Cloudflare asked to wait; 1s of the pause left"
            )

            await asyncio.sleep(1.2)
            _, parsed = await h.scrape()
            assert len(sim.requests) == 5
            for account in (ACCOUNT, OTHER_ACCOUNT):
                assert value(parsed, "cloudflare_warp_up", account_id=account) == 1
            remaining = value(parsed, "cloudflare_warp_api_ratelimit_remaining")
            assert remaining == 1200 - 5

    run(main())


def test_5xx_is_retried_up_to_max_retries(sim: SimulatedCloudflare) -> None:
    async def main() -> None:
        async with Harness(settings_for(sim, one_account(max_retries=2))) as h:
            sim.set_fault("server_error", times=2)
            _, parsed = await h.scrape()
            assert len(sim.requests) == 3
            assert value(parsed, "cloudflare_warp_up", account_id=ACCOUNT) == 1
            assert requests_by_code(parsed, "500") == 2
            assert requests_by_code(parsed, "200") == 1

            sim.set_fault("server_error")
            _, parsed = await h.scrape()
            assert len(sim.requests) == 6
            assert value(parsed, "cloudflare_warp_up", account_id=ACCOUNT) == 0
            assert infos(parsed, ACCOUNT) == FLEET

        async with Harness(settings_for(sim, one_account(max_retries=0))) as h:
            before = len(sim.requests)
            _, parsed = await h.scrape()
            assert len(sim.requests) == before + 1
            assert value(parsed, "cloudflare_warp_up", account_id=ACCOUNT) == 0

    run(main())


def test_connection_errors_are_retried_and_counted() -> None:
    config = parse_config(one_account(max_retries=2), "test.yaml")
    environ = {
        "CLOUDFLARE_API_TOKEN": TOKEN,
        "CLOUDFLARE_BASE_URL": f"http://127.0.0.1:{free_port()}/client/v4",
    }
    settings = resolve_settings(config, "test.yaml", environ)

    async def main() -> Samples:
        async with Harness(settings) as h:
            _, parsed = await h.scrape()
            return parsed

    parsed = run(main())
    assert requests_by_code(parsed, "connection_error") == 3
    assert value(parsed, "cloudflare_warp_up", account_id=ACCOUNT) == 0


def test_a_timeout_is_retried_when_the_deadline_allows(sim: SimulatedCloudflare) -> None:
    settings = settings_for(sim, one_account(timeout_seconds=1, max_retries=2))

    async def main() -> Samples:
        async with Harness(settings) as h:
            sim.set_fault("hang", times=1)
            headers = {"X-Prometheus-Scrape-Timeout-Seconds": "10"}
            _, parsed = await h.scrape(headers=headers)
            return parsed

    parsed = run(main())
    assert len(sim.requests) == 2
    assert requests_by_code(parsed, "timeout") == 1
    assert value(parsed, "cloudflare_warp_up", account_id=ACCOUNT) == 1


def test_scrape_answers_inside_the_prometheus_timeout(
    sim: SimulatedCloudflare, caplog: pytest.LogCaptureFixture
) -> None:
    """A hung API and a long api.timeout_seconds: the scrape header's deadline wins."""
    caplog.set_level(logging.DEBUG)
    settings = settings_for(sim, one_account(timeout_seconds=30, max_retries=2))

    async def main() -> tuple[float, Samples]:
        async with Harness(settings) as h:
            sim.set_fault("hang")
            started = time.monotonic()
            headers = {"X-Prometheus-Scrape-Timeout-Seconds": "2"}
            _, parsed = await h.scrape(headers=headers)
            return time.monotonic() - started, parsed

    elapsed, parsed = run(main())
    assert elapsed < 2.0, f"answered after {elapsed:.2f}s, Prometheus gave up at 2s"
    assert value(parsed, "cloudflare_warp_up", account_id=ACCOUNT) == 0
    # No retry was started that the deadline could not hold.
    assert len(sim.requests) == 1


def test_hung_api_without_header_answers_within_api_timeout(
    sim: SimulatedCloudflare, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(sim, one_account(timeout_seconds=1, max_retries=2))

    async def main() -> tuple[float, Samples]:
        async with Harness(settings) as h:
            sim.set_fault("hang")
            started = time.monotonic()
            _, parsed = await h.scrape()
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.2)  # the refresh may log its failure just after the answer
            return elapsed, parsed

    elapsed, parsed = run(main())
    assert elapsed < 2.0
    assert value(parsed, "cloudflare_warp_up", account_id=ACCOUNT) == 0
    errors = list(error_lines(caplog.records))
    assert errors == [f"account_id={ACCOUNT} refresh failed: timeout: no answer within 1.0s"]
