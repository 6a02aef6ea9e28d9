"""End to end: the console script against the simulated API over loopback HTTP."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from exporter.simulator import SimulatedCloudflare
from tests.conftest import ACCOUNT, ROOT, TOKEN, require_tool

MISSING = "00000000-0000-4000-8000-00000000dead"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(parsed: dict[Any, float], name: str, **labels: str) -> float | None:
    return parsed.get((name, frozenset(labels.items())))


def unix(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_console_script_serves_the_simulated_fleet(
    simulator: SimulatedCloudflare, exporter_process
) -> None:
    records = simulator.records(ACCOUNT)
    configured = [r["id"] for r in records[:40]] + [MISSING]
    exporter = exporter_process(
        {"accounts": [{"account_id": ACCOUNT, "registrations": configured}]},
        env={"CLOUDFLARE_API_TOKEN": TOKEN, "CLOUDFLARE_BASE_URL": simulator.base_url},
    )
    response = exporter.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    parsed = samples(text)

    assert value(parsed, "cloudflare_warp_up", account_id=ACCOUNT) == 1
    # 41 ids in batches of 100: one request (the simulator caps pages at 25, so two pages).
    list_requests = [q for p, q in simulator.requests if p.endswith("/devices/registrations")]
    assert len(list_requests) == 2
    assert all(("status", "all") in q and ("include", "policy") in q for q in list_requests)
    assert (
        value(
            parsed,
            "cloudflare_warp_registration_found",
            account_id=ACCOUNT,
            registration_id=MISSING,
        )
        == 0
    )

    for record in records[:40]:
        ident = {"account_id": ACCOUNT, "registration_id": record["id"]}
        assert value(parsed, "cloudflare_warp_registration_found", **ident) == 1
        assert value(
            parsed, "cloudflare_warp_registration_last_seen_timestamp_seconds", **ident
        ) == unix(record["last_seen_at"])
        assert value(parsed, "cloudflare_warp_registration_revoked", **ident) == (
            1 if record["revoked_at"] else 0
        )
        assert value(parsed, "cloudflare_warp_registration_deleted", **ident) == (
            1 if record["deleted_at"] else 0
        )
        revoked_at = value(
            parsed, "cloudflare_warp_registration_revoked_timestamp_seconds", **ident
        )
        assert revoked_at == (unix(record["revoked_at"]) if record["revoked_at"] else None)
        device = record["device"]
        info = dict(
            ident,
            device_id=device["id"],
            device_name=device["name"],
            client_version=device.get("client_version") or "",
            tunnel_type=record["tunnel_type"] or "",
            key_type=record["key_type"] or "",
            policy_id=(record.get("policy") or {}).get("id", ""),
            policy_name=(record.get("policy") or {}).get("name", ""),
        )
        assert value(parsed, "cloudflare_warp_registration_info", **info) == 1
        age = value(parsed, "cloudflare_warp_registration_last_seen_age_seconds", **ident)
        assert (
            age is not None
            and 0 < age - (datetime.now().timestamp() - unix(record["last_seen_at"])) + 60 < 120
        )

    # Fleet counts add up to the configured registrations that exist, by status.
    counts: dict[str, float] = {}
    for (name, labels), v in parsed.items():
        if name == "cloudflare_warp_registrations":
            status = dict(labels)["status"]
            counts[status] = counts.get(status, 0) + v
    expected = {"active": 0, "revoked": 0, "deleted": 0}
    for record in records[:40]:
        status = (
            "deleted" if record["deleted_at"] else "revoked" if record["revoked_at"] else "active"
        )
        expected[status] += 1
    assert {k: v for k, v in counts.items()} == {k: v for k, v in expected.items() if v}

    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert check.returncode == 0 and check.stdout == b"" and check.stderr == b"", check


def test_python_dash_m_and_console_script_agree_on_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().startswith("cloudflare-warp-exporter ")
    script = ROOT / ".venv" / "bin" / "cloudflare-warp-exporter"
    if script.exists():
        assert (
            subprocess.run([script, "--version"], capture_output=True, text=True).stdout
            == out.stdout
        )


def test_demo_once_prints_a_valid_exposition() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--demo", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    parsed = samples(out.stdout)
    infos = [k for k in parsed if k[0] == "cloudflare_warp_registration_info"]
    assert 150 <= len(infos) <= 250
    labels = [dict(k[1]) for k in infos]
    assert {lbl["tunnel_type"] for lbl in labels} >= {"wireguard", "masque", ""}
    assert {lbl["key_type"] for lbl in labels} >= {"curve25519", "secp256r1"}
    assert len({lbl["client_version"] for lbl in labels}) >= 4
    assert "" in {lbl["policy_name"] for lbl in labels}
    found = [v for k, v in parsed.items() if k[0] == "cloudflare_warp_registration_found"]
    assert 0 in found and 1 in found
    ages = [
        v for k, v in parsed.items() if k[0] == "cloudflare_warp_registration_last_seen_age_seconds"
    ]
    assert any(a > 7 * 86400 for a in ages) and any(a < 3600 for a in ages)
