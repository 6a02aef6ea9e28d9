"""Record parsing: what the API leaves out is accepted, what is broken is skipped with a reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exporter.models import InvalidRecord, Registration, parse_registration

NOW = 1_800_000_000.0
EXAMPLE = Path(__file__).resolve().parent / "data" / "get-registration-example.json"
"""The response example of Cloudflare's "Get registration" API reference page, verbatim."""


def minimal(**extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": "r1",
        "created_at": "2025-02-14T13:17:00Z",
        "updated_at": "2025-02-14T13:17:00Z",
        "last_seen_at": "2025-02-14T13:17:00Z",
        "key": "k",
        "device": {"id": "d1", "name": "My Device"},
    }
    record.update(extra)
    return record


def parsed(record: dict[str, Any]) -> Registration:
    result = parse_registration(record, NOW)
    assert isinstance(result, Registration), result
    return result


def test_reference_example_record() -> None:
    record = {
        "id": "11ffb86f-3f0c-4306-b4a2-e62f872b166a",
        "created_at": "2025-02-14T13:17:00Z",
        "device": {
            "id": "32aa0404-78f1-49a4-99e0-97f575081356",
            "name": "My Device",
            "client_version": "1.0.0",
        },
        "key": "U+QTP50Rs==",
        "last_seen_at": "2025-02-14T13:17:00Z",
        "updated_at": "2025-02-14T13:17:00Z",
        "deleted_at": "2025-02-14T13:17:00Z",
        "key_type": "secp256r1",
        "policy": {
            "id": "p1",
            "default": True,
            "deleted": True,
            "name": "name",
            "updated_at": "2025-02-14T13:17:00Z",
        },
        "revoked_at": "2025-02-14T13:17:00Z",
        "tunnel_type": "masque",
        "user": {"id": "u1", "email": "user@example.com", "name": "John Appleseed"},
    }
    reg = parsed(record)
    assert reg.last_seen == 1739539020.0  # 2025-02-14T13:17:00Z, computed by hand
    assert (reg.client_version, reg.tunnel_type, reg.key_type) == ("1.0.0", "masque", "secp256r1")
    assert (reg.policy_id, reg.policy_name, reg.user_email) == ("p1", "name", "user@example.com")
    assert reg.revoked == reg.deleted == 1739539020.0
    assert reg.status == "deleted"


def test_api_reference_example_parses() -> None:
    body = json.loads(EXAMPLE.read_text())
    reg = parsed(body["result"])
    assert reg.id == "11ffb86f-3f0c-4306-b4a2-e62f872b166a"
    assert (reg.device_name, reg.client_version, reg.tunnel_type) == (
        "My Device",
        "1.0.0",
        "masque",
    )
    assert reg.status == "deleted"


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"user": None}, lambda r: r.user_email == "" and r.user_name == ""),
        ({"device": {"id": "d1", "name": "n"}}, lambda r: r.client_version == ""),
        ({"tunnel_type": None, "key_type": None}, lambda r: r.tunnel_type == r.key_type == ""),
        ({}, lambda r: r.policy_id == r.policy_name == ""),
        (
            {"last_seen_at": "2025-02-14T13:17:00.123456Z"},
            lambda r: r.last_seen == 1739539020.123456,
        ),
        ({"last_seen_at": "2025-02-14T13:17:00.5+01:00"}, lambda r: r.last_seen == 1739535420.5),
        ({"virtual_ipv4": "100.96.0.1", "registration_type": "warp"}, lambda r: r.id == "r1"),
        ({"revoked_at": "2025-02-15T00:00:00Z"}, lambda r: r.status == "revoked"),
        ({"deleted_at": None, "revoked_at": None}, lambda r: r.status == "active"),
    ],
)
def test_odd_but_valid_records(extra: dict[str, Any], check: Any) -> None:
    assert check(parsed(minimal(**extra)))


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({k: v for k, v in minimal().items() if k != "id"}, "missing_id"),
        ({k: v for k, v in minimal().items() if k != "last_seen_at"}, "missing_last_seen_at"),
        (minimal(last_seen_at="last tuesday"), "bad_timestamp"),
        (minimal(last_seen_at="2025-02-14T13:17:00"), "bad_timestamp"),
        (minimal(created_at="2025-13-45T00:00:00Z"), "bad_timestamp"),
        (minimal(last_seen_at="2099-01-01T00:00:00Z"), "future_timestamp"),
        (minimal(device="a string"), "invalid_record"),
        ("not an object", "invalid_record"),
    ],
)
def test_bad_records_are_reported_with_a_reason(record: Any, reason: str) -> None:
    result = parse_registration(record, NOW)
    assert isinstance(result, InvalidRecord)
    assert result.reason == reason


def test_small_clock_skew_is_tolerated() -> None:
    reg = parsed(minimal(last_seen_at="2027-01-15T08:02:00Z"))  # 120 s after NOW
    assert reg.last_seen == NOW + 120
