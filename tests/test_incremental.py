"""Issue 7: between full listings, a seen_after listing merged in equals a full refresh."""

from __future__ import annotations

import copy
import time
from typing import Any

from exporter.fleet import generate_fleet, rfc3339
from exporter.simulator import SimulatedCloudflare
from tests.conftest import ACCOUNT, NOW, TOKEN
from tests.resilience_harness import Harness, Samples, run, settings_for

VOLATILE = {
    "cloudflare_warp_registration_last_seen_age_seconds",
    "cloudflare_warp_registrations_last_seen_before",
}


def registration_samples(parsed: Samples) -> Samples:
    """The per-registration and fleet samples: what the data says, not the exporter's health."""
    return {
        key: v
        for key, v in parsed.items()
        if key[0].startswith(("cloudflare_warp_registration", "cloudflare_warp_registrations"))
        and key[0] not in VOLATILE
    }


def config(full_refresh_seconds: float) -> dict[str, Any]:
    return {
        "accounts": [{"account_id": ACCOUNT, "discover": True}],
        "collection": {"min_interval_seconds": 0, "full_refresh_seconds": full_refresh_seconds},
    }


def test_incremental_refresh_equals_a_full_refresh() -> None:
    fleet = generate_fleet(300, now=NOW, seed=11)
    sim = SimulatedCloudflare({ACCOUNT: fleet}, token=TOKEN, max_per_page=50)
    sim.start_in_thread()
    try:

        async def go() -> tuple[Samples, Samples, list[list[tuple[str, str]]]]:
            async with Harness(settings_for(sim, config(3600))) as incremental:
                await incremental.scrape()  # the full listing: 300 / 50 = 6 pages
                assert len(sim.requests) == 6
                # The fleet moves on: 25 devices check in (some upgraded), 5 new ones enrol.
                now = time.time() - 1
                changed = copy.deepcopy(fleet)
                for index, record in enumerate(changed[:250:10]):
                    record["last_seen_at"] = rfc3339(now - index)
                    if index % 2:
                        record["device"]["client_version"] = "2025.9.100.0"
                changed += generate_fleet(5, now=now, seed=99)
                for record in changed[-5:]:
                    record["last_seen_at"] = rfc3339(now)
                sim.replace(ACCOUNT, changed)
                before = len(sim.requests)
                _, merged = await incremental.scrape()
                increment = [q for _, q in sim.requests[before:]]
            async with Harness(settings_for(sim, config(0))) as full:
                _, fresh = await full.scrape()
            return merged, fresh, increment

        merged, fresh, increment = run(go())
    finally:
        sim.stop_thread()
    # The incremental refresh asked only for recently seen registrations: one page, not six.
    assert len(increment) == 1 and any(key == "seen_after" for key, _ in increment[0])
    merged_data, fresh_data = registration_samples(merged), registration_samples(fresh)
    assert merged_data == fresh_data
    versions = {
        dict(k[1]).get("client_version")
        for k in fresh_data
        if k[0] == "cloudflare_warp_registration_info"
    }
    assert "2025.9.100.0" in versions  # the change is really in both, not absent from both
    infos = [k for k in fresh_data if k[0] == "cloudflare_warp_registration_info"]
    assert len(infos) == 305
