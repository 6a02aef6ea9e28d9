"""``--demo``: a simulated Cloudflare API with a realistic fleet, on loopback, behind the real
client. Two accounts: one discovered in full, one watched through configured ids (two of which
do not exist, so ``cloudflare_warp_registration_found`` shows a 0)."""

from __future__ import annotations

import secrets
import time

from pydantic import SecretStr

from exporter.config import Config, Settings
from exporter.fleet import generate_fleet
from exporter.simulator import SimulatedCloudflare

DISCOVERED_ACCOUNT = "0d3a0e1f5c6b4a2d9e8f7a6b5c4d3e2f"
CONFIGURED_ACCOUNT = "1f2e3d4c5b6a79880796a5b4c3d2e1f0"
MISSING_IDS = ("00000000-dead-4bad-8000-000000000001", "00000000-dead-4bad-8000-000000000002")


async def start_demo(
    fleet_size: int = 200, source: str = "(demo)"
) -> tuple[SimulatedCloudflare, Settings]:
    now = time.time()
    fleet = generate_fleet(fleet_size, now=now)
    split = fleet_size * 7 // 8
    discovered, configured = fleet[:split], fleet[split:]
    token = secrets.token_urlsafe(30)
    online = [r["id"] for i, r in enumerate(fleet) if i % 50 >= 30]
    simulator = SimulatedCloudflare(
        {DISCOVERED_ACCOUNT: discovered, CONFIGURED_ACCOUNT: configured},
        token=token,
        online=online,
    )
    base_url = await simulator.start()
    config = Config.model_validate(
        {
            "accounts": [
                {"account_id": DISCOVERED_ACCOUNT, "discover": True},
                {
                    "account_id": CONFIGURED_ACCOUNT,
                    "registrations": [r["id"] for r in configured] + list(MISSING_IDS),
                },
            ],
            "collection": {"min_interval_seconds": 15},
        }
    )
    settings = Settings(
        source=source, config=config, base_url=base_url, token=SecretStr(token), user_hash_key=None
    )
    return simulator, settings
