"""A realistic simulated WARP fleet: API-shaped registration records for the demo and tests.

Deterministic for a given seed and ``now``: both tunnel and key types, several client
versions and policies, some stale, some revoked or deleted, and a few records that leave out
optional fields the way the real API does (``user: null``, no client version, no policy).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

CLIENT_VERSIONS = ("2024.6.415.0", "2024.11.309.0", "2025.1.861.0", "2025.4.929.0")
POLICIES = (
    ("a1b2c3d4-0000-4000-8000-000000000001", "Default", True),
    ("a1b2c3d4-0000-4000-8000-000000000002", "Engineering", False),
    ("a1b2c3d4-0000-4000-8000-000000000003", "Contractors", False),
    ("a1b2c3d4-0000-4000-8000-000000000004", "Executives", False),
)
FIRST_NAMES = ("ada", "grace", "linus", "margaret", "ken", "barbara", "dennis", "radia", "alan")
DEVICE_KINDS = ("MacBook-Pro", "ThinkPad-X1", "Surface-Laptop", "iPhone", "Pixel", "Dell-XPS")
DAY = 86400.0


def rfc3339(unix_seconds: float, fractional: bool = False) -> str:
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    if fractional:
        return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _last_seen_age(rng: random.Random, index: int) -> float:
    """Mostly recent; about 12% stale (7-30 days) and 6% dormant (over 30 days)."""
    bucket = index % 50
    if bucket < 3:
        return rng.uniform(31, 120) * DAY
    if bucket < 9:
        return rng.uniform(7.5, 29) * DAY
    if bucket < 14:
        return rng.uniform(1.5, 6.5) * DAY
    return rng.uniform(30, 20 * 3600)


def make_registration(rng: random.Random, index: int, now: float) -> dict[str, Any]:
    """One API record; every field as the list endpoint sends it with ``include=policy``."""
    masque = rng.random() < 0.45
    user = rng.choice(FIRST_NAMES)
    created = now - rng.uniform(40, 400) * DAY
    last_seen = max(created + 60, now - _last_seen_age(rng, index))
    policy_id, policy_name, default = POLICIES[index % len(POLICIES)]
    record: dict[str, Any] = {
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "created_at": rfc3339(created),
        "updated_at": rfc3339(last_seen, fractional=index % 3 == 0),
        "last_seen_at": rfc3339(last_seen, fractional=index % 3 == 0),
        "deleted_at": None,
        "revoked_at": None,
        "key": f"k{rng.getrandbits(160):040x}",
        "key_type": "secp256r1" if masque else "curve25519",
        "tunnel_type": "masque" if masque else "wireguard",
        "device": {
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "name": f"{user}-{rng.choice(DEVICE_KINDS)}-{index:04d}",
            "client_version": CLIENT_VERSIONS[rng.randrange(len(CLIENT_VERSIONS))],
        },
        "user": {
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "email": f"{user}.{index}@example.com",
            "name": user.capitalize(),
        },
        "policy": {
            "id": policy_id,
            "name": policy_name,
            "default": default,
            "deleted": False,
            "updated_at": rfc3339(created),
        },
        "registration_type": "warp",
    }
    if index % 17 == 5:
        revoked = last_seen + rng.uniform(0.1, 2) * DAY
        record["revoked_at"] = rfc3339(min(revoked, now - 60))
        record["updated_at"] = record["revoked_at"]
    if index % 29 == 7:
        deleted = last_seen + rng.uniform(0.1, 2) * DAY
        record["deleted_at"] = rfc3339(min(deleted, now - 60))
        record["updated_at"] = record["deleted_at"]
    if index % 23 == 11:
        record["user"] = None
    if index % 31 == 13:
        del record["device"]["client_version"]
    if index % 37 == 17:
        record["tunnel_type"] = None
        record["key_type"] = None
    if index % 41 == 19:
        del record["policy"]
    return record


def generate_fleet(count: int, *, now: float, seed: int = 42) -> list[dict[str, Any]]:
    rng = random.Random(seed)  # noqa: S311 (simulated data, not security)
    return [make_registration(rng, index, now) for index in range(count)]
