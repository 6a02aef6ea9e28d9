"""Single flight, stale data, churn, bad API input, reloads and signals (issue 3).

The exporter runs in process behind its real HTTP server (or as a real process where signals
and files matter), the simulated API in a thread; every request crosses loopback.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.config import ConfigError, load_settings
from exporter.fleet import generate_fleet
from exporter.simulator import Fault, SimulatedCloudflare
from tests.conftest import ACCOUNT, NOW, TOKEN, write_config
from tests.resilience_harness import (
    Harness,
    Samples,
    error_lines,
    parse,
    run,
    series,
    series_count,
    settings_for,
    start_simulator,
    value,
)

FLEET = 60
INFO = "cloudflare_warp_registration_info"


@pytest.fixture
def sim() -> Iterator[SimulatedCloudflare]:
    """One account of 60 records, 25 a page: a full listing takes three requests."""
    simulator = start_simulator({ACCOUNT: FLEET}, max_per_page=25)
    yield simulator
    simulator.stop_thread()


def discover(**collection: object) -> dict[str, Any]:
    return {
        "api": {"max_retries": 0},
        "collection": {"min_interval_seconds": 0, **collection},
        "accounts": [{"account_id": ACCOUNT, "discover": True}],
    }


def up(parsed: Samples) -> float | None:
    return value(parsed, "cloudflare_warp_up", account_id=ACCOUNT)


def ids(parsed: Samples) -> set[str]:
    return {labels["registration_id"] for labels in series(parsed, INFO, account_id=ACCOUNT)}


# -- one refresh at a time -------------------------------------------------------------------


def test_50_concurrent_cold_scrapes_share_one_refresh(sim: SimulatedCloudflare) -> None:
    sim.latency = 0.2
    config = discover()
    del config["collection"]["min_interval_seconds"]  # the default, as deployed

    async def main() -> list[str]:
        async with Harness(settings_for(sim, config)) as h:
            responses = await asyncio.gather(*(h.get("/metrics") for _ in range(50)))
            assert [r.status_code for r in responses] == [200] * 50
            return [r.text for r in responses]

    texts = run(main())
    print(f"\n50 concurrent cold scrapes: {len(sim.requests)} API requests")
    assert len(sim.requests) == 3  # one full listing: 60 records, 25 a page
    expected = {r["id"] for r in sim.records(ACCOUNT)}
    for text in texts:
        parsed = parse(text)
        assert up(parsed) == 1
        assert ids(parsed) == expected


# -- data that does not flap -----------------------------------------------------------------


def test_failed_refresh_serves_last_good_data_until_max_stale(
    sim: SimulatedCloudflare, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Harness(settings_for(sim, discover(max_stale_seconds=1.5))) as h:
            _, parsed = await h.scrape()
            good = ids(parsed)
            success = value(parsed, "cloudflare_warp_last_success_timestamp_seconds", **acct)
            assert up(parsed) == 1 and len(good) == FLEET and success is not None

            sim.set_fault("server_error")
            await asyncio.sleep(0.5)
            _, parsed = await h.scrape()
            assert up(parsed) == 0
            assert ids(parsed) == good
            stale = value(parsed, "cloudflare_warp_last_success_timestamp_seconds", **acct)
            assert stale == success and time.time() - success >= 0.5

            await asyncio.sleep(1.2)
            _, parsed = await h.scrape()
            assert up(parsed) == 0
            assert ids(parsed) == set()
            assert series(parsed, "cloudflare_warp_registrations", account_id=ACCOUNT) == []
            # The age of the data is still told, though no data is served.
            assert value(parsed, "cloudflare_warp_last_success_timestamp_seconds", **acct) == (
                success
            )

            sim.set_fault(None)
            _, parsed = await h.scrape()
            assert up(parsed) == 1 and ids(parsed) == good

    acct = {"account_id": ACCOUNT}
    run(main())
    assert any("dropping registrations last fetched" in r.getMessage() for r in caplog.records)


def test_a_registration_that_disappears_leaves_no_series(sim: SimulatedCloudflare) -> None:
    records = sim.records(ACCOUNT)
    configured = [r["id"] for r in records[:10]]
    config = {
        "api": {"max_retries": 0},
        "collection": {"min_interval_seconds": 0, "full_refresh_seconds": 0},
        "accounts": [{"account_id": ACCOUNT, "registrations": configured}],
    }

    async def main() -> None:
        async with Harness(settings_for(sim, config)) as h:
            text, parsed = await h.scrape()
            gone = configured[0]
            assert gone in ids(parsed)
            sim.replace(ACCOUNT, records[1:])
            text, parsed = await h.scrape()
            assert up(parsed) == 1
            assert gone not in ids(parsed)
            assert f'registration_id="{gone}"' in text  # only as found 0
            lines = [line for line in text.splitlines() if gone in line]
            assert lines == [
                f'cloudflare_warp_registration_found{{account_id="{ACCOUNT}",'
                f'registration_id="{gone}"}} 0'
            ]

    run(main())


def test_a_registration_no_longer_discovered_goes_at_the_next_full_listing(
    sim: SimulatedCloudflare,
) -> None:
    """Incremental refreshes (seen_after) cannot see a deletion; the next full listing does."""
    records = sim.records(ACCOUNT)

    async def main() -> None:
        async with Harness(settings_for(sim, discover(full_refresh_seconds=1))) as h:
            text, _ = await h.scrape()
            gone = records[0]["id"]
            assert gone in text
            sim.replace(ACCOUNT, records[1:])
            await asyncio.sleep(1.1)
            text, parsed = await h.scrape()
            assert up(parsed) == 1
            assert gone not in text
            assert len(ids(parsed)) == FLEET - 1

        async with Harness(settings_for(sim, discover(full_refresh_seconds=0))) as h:
            await h.scrape()
            gone = records[1]["id"]
            sim.replace(ACCOUNT, records[2:])
            text, parsed = await h.scrape()
            assert gone not in text
            assert len(ids(parsed)) == FLEET - 2

    run(main())


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_1000_refreshes_over_a_churning_fleet_stay_flat() -> None:
    fleet_size = 30
    fleet = generate_fleet(fleet_size, now=NOW, seed=3)
    sim = SimulatedCloudflare({ACCOUNT: fleet}, token=TOKEN)
    sim.start_in_thread()
    config = {
        "api": {"max_requests_per_5m": 1200, "max_retries": 0},
        "collection": {"min_interval_seconds": 0, "full_refresh_seconds": 0},
        "accounts": [{"account_id": ACCOUNT, "discover": True}],
    }
    counter = 0

    def churn() -> None:
        """Replace three registrations with new ones, as devices are re-enrolled."""
        nonlocal counter
        current = sim.records(ACCOUNT)
        for i in range(3):
            counter += 1
            index = (counter * 7 + i) % len(current)
            current[index] = dict(current[index], id=str(uuid.UUID(int=counter, version=4)))
        sim.replace(ACCOUNT, current)

    async def refresh(h: Harness) -> str:
        churn()
        sim.requests.clear()
        text, parsed = await h.scrape()
        assert up(parsed) == 1 and len(ids(parsed)) == fleet_size
        return text

    async def main() -> tuple[int, int, int, int]:
        async with Harness(settings_for(sim, config)) as h:
            for _ in range(100):
                text = await refresh(h)
            rss_warm, series_warm = rss_bytes(), series_count(text)
            for _ in range(1000):
                text = await refresh(h)
            return rss_warm, rss_bytes(), series_warm, series_count(text)

    try:
        rss_warm, rss_end, series_warm, series_end = run(main(), timeout=120)
    finally:
        sim.stop_thread()
    print(
        f"\nchurn: RSS {rss_warm / 2**20:.1f} MiB after 100 refreshes, "
        f"{rss_end / 2**20:.1f} MiB after 1,000 more; series {series_warm} -> {series_end}"
    )
    assert counter == 3 * 1100
    assert abs(series_end - series_warm) <= 10  # fleet gauges differ by the mix of statuses
    assert rss_end - rss_warm < 10 * 2**20


# -- bad input from the API ------------------------------------------------------------------

FAULTS: list[tuple[Fault, str]] = [
    (
        "truncated_json",
        "HTTP 200: body is not a Cloudflare JSON envelope (application/json, 47 bytes)",
    ),
    ("bad_gateway_html", "HTTP 502: non-JSON error body (text/html)"),
    ("success_false", "HTTP 200, Cloudflare error 1000: Simulated failure"),
    ("wrong_result_type", "HTTP 200: result is dict, expected a list"),
    ("repeat_cursor", "HTTP 200: cursor 'MDpzaW0=' repeated; paging stopped"),
    ("huge_body", "HTTP 200: body of 20971551 bytes exceeds 16777216"),
    ("server_error", "HTTP 500, Cloudflare error 10001: Internal server error"),
    ("hang", "timeout: no answer within 1.0s"),
]


@pytest.mark.parametrize(("fault", "message"), FAULTS, ids=[f for f, _ in FAULTS])
def test_bad_input_gives_up_0_one_clear_log_line_and_keeps_serving(
    sim: SimulatedCloudflare, caplog: pytest.LogCaptureFixture, fault: Fault, message: str
) -> None:
    config = discover()
    config["api"]["timeout_seconds"] = 1

    async def main() -> None:
        async with Harness(settings_for(sim, config)) as h:
            _, parsed = await h.scrape()
            good = ids(parsed)
            assert up(parsed) == 1 and len(good) == FLEET
            caplog.clear()

            sim.set_fault(fault)
            _, parsed = await h.scrape()
            for _ in range(50):  # a hung request's failure is logged as the scrape answers
                if list(error_lines(caplog.records)):
                    break
                await asyncio.sleep(0.05)
            assert up(parsed) == 0
            assert ids(parsed) == good  # the last good data, not an empty or partial list
            errors = list(error_lines(caplog.records))
            assert errors == [f"account_id={ACCOUNT} refresh failed: {message}"]

            sim.set_fault(None)
            _, parsed = await h.scrape()
            assert up(parsed) == 1 and ids(parsed) == good

    run(main())


def test_invalid_records_are_skipped_and_counted(
    sim: SimulatedCloudflare, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> Samples:
        async with Harness(settings_for(sim, discover())) as h:
            sim.set_fault("invalid_records", times=1)
            _, parsed = await h.scrape()
            return parsed

    parsed = run(main())
    assert up(parsed) == 1
    assert ids(parsed) == {r["id"] for r in sim.records(ACCOUNT)}
    for reason in ("missing_id", "missing_last_seen_at", "bad_timestamp", "future_timestamp"):
        counted = value(
            parsed, "cloudflare_warp_invalid_records_total", account_id=ACCOUNT, reason=reason
        )
        assert counted == 1, reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"account_id={ACCOUNT}: skipped 4 invalid record(s) (")


# -- configuration at run time ---------------------------------------------------------------


def test_reload_during_a_scrape_still_answers_it(sim: SimulatedCloudflare, tmp_path: Path) -> None:
    """A reload cancels the running refresh; the scrape waiting on it must not be dropped."""
    sim.latency = 0.5
    path = write_config(tmp_path, discover())
    environ = {"CLOUDFLARE_API_TOKEN": TOKEN, "CLOUDFLARE_BASE_URL": sim.base_url}

    def loader() -> Any:
        return load_settings(path, environ)

    async def main() -> None:
        async with Harness(loader(), loader=loader) as h:
            scrape = asyncio.create_task(h.get("/metrics"))
            await asyncio.sleep(0.2)
            reload = await h.post("/-/reload")
            assert reload.status_code == 200
            response = await scrape
            assert response.status_code == 200
            assert "cloudflare_warp_up" in response.text
            _, parsed = await h.scrape()
            assert up(parsed) == 1

    run(main())


def test_sighup_and_post_reload_reread_config_and_token_file(
    sim: SimulatedCloudflare, exporter_process: Any, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token\n")
    token_file.chmod(0o600)
    config = discover()
    config["api"]["token_file"] = str(token_file)
    exporter = exporter_process(config, env={"CLOUDFLARE_BASE_URL": sim.base_url})

    def metrics() -> Samples:
        response = exporter.get("/metrics")
        assert response.status_code == 200
        return parse(response.text)

    def reload_count() -> int:
        return exporter.log().count("configuration reloaded from")

    parsed = metrics()
    assert up(parsed) == 0
    assert value(
        parsed,
        "cloudflare_warp_api_requests_total",
        account_id=ACCOUNT,
        endpoint="list",
        code="403",
    )

    # SIGHUP: the new token file is read.
    token_file.write_text(TOKEN + "\n")
    exporter.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while reload_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    parsed = metrics()
    assert up(parsed) == 1 and len(ids(parsed)) == FLEET
    assert value(parsed, "cloudflare_warp_config_last_reload_successful") == 1

    # POST /-/reload with an invalid config: the old one stays, the reason is logged.
    bad = dict(config, collection={"min_interval_seconds": -1})
    write_config(tmp_path, bad)
    response = httpx.post(exporter.url + "/-/reload", timeout=10)
    assert response.status_code == 500
    parsed = metrics()
    assert value(parsed, "cloudflare_warp_config_last_reload_successful") == 0
    assert up(parsed) == 1 and len(ids(parsed)) == FLEET
    failed = [line for line in exporter.log().splitlines() if "reload failed" in line]
    assert len(failed) == 1
    assert (
        "collection.min_interval_seconds: Input should be greater than or equal to 0" in (failed[0])
    )

    # A token file that became unreadable is a failed reload too; the running token stays.
    write_config(tmp_path, config)
    token_file.unlink()
    response = httpx.post(exporter.url + "/-/reload", timeout=10)
    assert response.status_code == 500
    parsed = metrics()
    assert up(parsed) == 1
    assert value(parsed, "cloudflare_warp_config_last_reload_successful") == 0

    token_file.write_text(TOKEN + "\n")
    assert httpx.post(exporter.url + "/-/reload", timeout=10).status_code == 200
    assert value(metrics(), "cloudflare_warp_config_last_reload_successful") == 1
    assert "Traceback" not in exporter.log()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_stop_cleanly_with_a_scrape_in_flight(
    sim: SimulatedCloudflare, exporter_process: Any, signum: signal.Signals
) -> None:
    config = discover()
    config["api"]["timeout_seconds"] = 30
    exporter = exporter_process(
        config, env={"CLOUDFLARE_API_TOKEN": TOKEN, "CLOUDFLARE_BASE_URL": sim.base_url}
    )
    assert exporter.get("/metrics").status_code == 200
    sim.set_fault("hang")
    outcome: list[object] = []

    def scrape() -> None:
        try:
            outcome.append(httpx.get(exporter.url + "/metrics", timeout=30).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=scrape)
    thread.start()
    deadline = time.monotonic() + 10
    while len(sim.requests) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(sim.requests) == 4  # three pages, then the hung request in flight
    started = time.monotonic()
    exporter.process.send_signal(signum)
    exporter.process.wait(10)
    stopped = time.monotonic() - started
    thread.join(10)
    log = exporter.log()
    print(f"\n{signum.name}: stopped in {stopped:.1f}s; in-flight scrape: {outcome}")
    assert exporter.process.returncode == 0, log
    assert stopped < 5
    assert "Traceback" not in log
    assert re.search(r"msg=\"stopped in \d+\.\ds\"", log), log
    assert outcome == [200]  # the in-flight scrape is answered with the data there is


def test_a_config_error_is_a_config_error(tmp_path: Path) -> None:
    """The reload test relies on an invalid value being a ConfigError, not a crash."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"accounts": [], "collection": {"min_interval_seconds": -1}}))
    with pytest.raises(ConfigError):
        load_settings(path, {})
