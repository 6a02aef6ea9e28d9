"""Rendering: the exact exposition for a small fleet, escaping, OpenMetrics and detail levels."""

from __future__ import annotations

import subprocess
from collections import Counter

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter import metrics as m
from exporter.exposition import (
    AccountView,
    Compiler,
    ExporterView,
    LabelPolicy,
    escape_label,
    render,
)
from exporter.models import Registration
from tests.conftest import require_tool

A = "abc"


def reg(rid: str, **kw: object) -> Registration:
    base: dict[str, object] = {
        "id": rid,
        "device_id": "d-" + rid,
        "device_name": "laptop",
        "client_version": "2025.1.861.0",
        "tunnel_type": "masque",
        "key_type": "secp256r1",
        "policy_id": "p1",
        "policy_name": "Default",
        "user_email": "ada@example.com",
        "user_name": "Ada",
        "last_seen": 1_700_000_000.0,
        "created": 1_690_000_000.0,
        "updated": 1_700_000_000.0,
        "revoked": None,
        "deleted": None,
    }
    base.update(kw)
    return Registration(**base)  # type: ignore[arg-type]


def view_of(
    regs: list[Registration],
    policy: LabelPolicy | None = None,
    found: list[tuple[str, bool]] | None = None,
) -> ExporterView:
    compiler = Compiler(policy or LabelPolicy())
    compiled = sorted((compiler.compile(A, r, None) for r in regs), key=lambda c: c.id)
    counts = Counter(c.fleet_key for c in compiled)
    account = AccountView(
        account_id=A,
        registrations=compiled,
        found=found or [],
        fleet_counts=sorted(counts.items()),
        active_last_seen=sorted(c.last_seen for c in compiled if c.active),
        up=True,
        refresh_seconds=0.25,
        last_success=1_700_000_100.0,
        requests=[("list", "200", 3)],
        invalid=[("missing_id", 1)],
    )
    return ExporterView([account], 0, 1100.0, True, 1_699_999_000.0, "9.9.9", "3.11.7")


SMALL_FLEET_BODY = """\
# HELP cloudflare_warp_registration_info Descriptive labels of a WARP registration; always 1.
# TYPE cloudflare_warp_registration_info gauge
cloudflare_warp_registration_info{account_id="abc",registration_id="r1",device_id="d-r1",device_name="laptop",client_version="2025.1.861.0",tunnel_type="masque",key_type="secp256r1",policy_id="p1",policy_name="Default"} 1
cloudflare_warp_registration_info{account_id="abc",registration_id="r2",device_id="d-r2",device_name="Bob's \\"work\\" \\\\ laptop\\nline2",client_version="",tunnel_type="",key_type="",policy_id="",policy_name=""} 1
# HELP cloudflare_warp_registration_last_seen_timestamp_seconds Unix time the registration was last seen by Cloudflare (last_seen_at).
# TYPE cloudflare_warp_registration_last_seen_timestamp_seconds gauge
cloudflare_warp_registration_last_seen_timestamp_seconds{account_id="abc",registration_id="r1"} 1700000000
cloudflare_warp_registration_last_seen_timestamp_seconds{account_id="abc",registration_id="r2"} 1699000000.5
# HELP cloudflare_warp_registration_created_timestamp_seconds Unix time the registration was created (created_at).
# TYPE cloudflare_warp_registration_created_timestamp_seconds gauge
cloudflare_warp_registration_created_timestamp_seconds{account_id="abc",registration_id="r1"} 1690000000
cloudflare_warp_registration_created_timestamp_seconds{account_id="abc",registration_id="r2"} 1690000000
# HELP cloudflare_warp_registration_updated_timestamp_seconds Unix time the registration was last updated (updated_at).
# TYPE cloudflare_warp_registration_updated_timestamp_seconds gauge
cloudflare_warp_registration_updated_timestamp_seconds{account_id="abc",registration_id="r1"} 1700000000
cloudflare_warp_registration_updated_timestamp_seconds{account_id="abc",registration_id="r2"} 1699500000
# HELP cloudflare_warp_registration_revoked 1 if the registration is revoked (revoked_at is set), else 0.
# TYPE cloudflare_warp_registration_revoked gauge
cloudflare_warp_registration_revoked{account_id="abc",registration_id="r1"} 0
cloudflare_warp_registration_revoked{account_id="abc",registration_id="r2"} 1
# HELP cloudflare_warp_registration_deleted 1 if the registration is deleted (deleted_at is set), else 0.
# TYPE cloudflare_warp_registration_deleted gauge
cloudflare_warp_registration_deleted{account_id="abc",registration_id="r1"} 0
cloudflare_warp_registration_deleted{account_id="abc",registration_id="r2"} 0
# HELP cloudflare_warp_registration_revoked_timestamp_seconds Unix time the registration was revoked; only for revoked registrations.
# TYPE cloudflare_warp_registration_revoked_timestamp_seconds gauge
cloudflare_warp_registration_revoked_timestamp_seconds{account_id="abc",registration_id="r2"} 1699500000
# HELP cloudflare_warp_registration_deleted_timestamp_seconds Unix time the registration was deleted; only for deleted registrations.
# TYPE cloudflare_warp_registration_deleted_timestamp_seconds gauge
# HELP cloudflare_warp_registration_last_seen_age_seconds Seconds since the registration was last seen, computed at scrape time.
# TYPE cloudflare_warp_registration_last_seen_age_seconds gauge
cloudflare_warp_registration_last_seen_age_seconds{account_id="abc",registration_id="r1"} 3601.000
cloudflare_warp_registration_last_seen_age_seconds{account_id="abc",registration_id="r2"} 1003600.500
# HELP cloudflare_warp_registration_found Per configured registration id: 1 if the API returned it, else 0.
# TYPE cloudflare_warp_registration_found gauge
cloudflare_warp_registration_found{account_id="abc",registration_id="r1"} 1
cloudflare_warp_registration_found{account_id="abc",registration_id="gone"} 0
# HELP cloudflare_warp_registrations Number of registrations by status (active, revoked, deleted) and descriptive labels.
# TYPE cloudflare_warp_registrations gauge
cloudflare_warp_registrations{account_id="abc",status="active",tunnel_type="masque",key_type="secp256r1",client_version="2025.1.861.0",policy_name="Default"} 1
cloudflare_warp_registrations{account_id="abc",status="revoked",tunnel_type="",key_type="",client_version="",policy_name=""} 1
# HELP cloudflare_warp_registrations_last_seen_before Number of active registrations not seen for longer than the threshold.
# TYPE cloudflare_warp_registrations_last_seen_before gauge
cloudflare_warp_registrations_last_seen_before{account_id="abc",threshold="1h"} 1
cloudflare_warp_registrations_last_seen_before{account_id="abc",threshold="1d"} 0
cloudflare_warp_registrations_last_seen_before{account_id="abc",threshold="7d"} 0
cloudflare_warp_registrations_last_seen_before{account_id="abc",threshold="30d"} 0
"""
# The scrape is at 1_700_003_601: r1 (active) was seen 3601 s ago, just over 1h, so only the 1h
# bucket counts it; r2 is revoked and counts in no bucket however old.


def small_fleet() -> list[Registration]:
    odd = reg(
        "r2",
        device_name='Bob\'s "work" \\ laptop\nline2',
        client_version="",
        tunnel_type="",
        key_type="",
        policy_id="",
        policy_name="",
        last_seen=1_699_000_000.5,
        updated=1_699_500_000.0,
        revoked=1_699_500_000.0,
    )
    return [odd, reg("r1")]


def test_exact_exposition_for_a_small_fleet() -> None:
    view = view_of(small_fleet(), found=[("r1", True), ("gone", False)])
    text = b"".join(render(view, now=1_700_003_601.0)).decode()
    assert text.startswith(SMALL_FLEET_BODY)
    health = text[len(SMALL_FLEET_BODY) :]
    assert 'cloudflare_warp_up{account_id="abc"} 1\n' in health
    assert (
        'cloudflare_warp_api_requests_total{account_id="abc",endpoint="list",code="200"} 3\n'
        in health
    )
    assert (
        'cloudflare_warp_invalid_records_total{account_id="abc",reason="missing_id"} 1\n' in health
    )
    assert "cloudflare_warp_api_ratelimit_remaining 1100\n" in health
    assert (
        'cloudflare_warp_exporter_build_info{version="9.9.9",python_version="3.11.7"} 1\n' in health
    )
    # Every family is announced exactly once, in the order of metrics.ALL_METRICS.
    names = [line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert sorted(names) == sorted(metric.name for metric in m.ALL_METRICS)


def test_escaped_label_survives_a_parser_round_trip() -> None:
    text = b"".join(render(view_of(small_fleet()), now=1_700_003_601.0)).decode()
    infos = [
        s
        for f in parse_text(text)
        for s in f.samples
        if s.name == "cloudflare_warp_registration_info"
    ]
    assert {s.labels["device_name"] for s in infos} == {"laptop", 'Bob\'s "work" \\ laptop\nline2'}


def test_escape_label_rules() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert escape_label("Zoë ☃") == "Zoë ☃"


def test_openmetrics_output_parses_and_ends_with_eof() -> None:
    text = b"".join(render(view_of(small_fleet()), now=1_700_003_601.0, openmetrics=True)).decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["cloudflare_warp_registration"].type == "info"
    assert families["cloudflare_warp_api_requests"].type == "counter"
    assert families["cloudflare_warp_up"].samples[0].value == 1


def test_promtool_accepts_the_exposition() -> None:
    promtool = require_tool("promtool")
    text = b"".join(render(view_of(small_fleet(), found=[("r1", True)]), now=1_700_003_601.0))
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert (check.returncode, check.stdout, check.stderr) == (0, b"", b"")


def test_user_labels_email_hashed_and_dropped() -> None:
    email = view_of(
        [reg("r1")], LabelPolicy(user_labels="email", drop_labels=frozenset({"device_name"}))
    )
    text = b"".join(render(email, now=1_700_000_000.0)).decode()
    assert 'policy_name="Default",user_email="ada@example.com",user_name="Ada"} 1' in text
    assert "device_name" not in text
    hashed = view_of([reg("r1")], LabelPolicy(user_labels="hashed", user_hash_key=b"k"))
    text = b"".join(render(hashed, now=1_700_000_000.0)).decode()
    # HMAC-SHA256(key=b"k", msg=b"ada@example.com"), computed independently with openssl:
    # printf ada@example.com | openssl dgst -sha256 -hmac k
    expected = (
        subprocess.run(
            ["openssl", "dgst", "-sha256", "-hmac", "k"],
            input=b"ada@example.com",
            capture_output=True,
            check=True,
        )
        .stdout.split()[-1]
        .decode()
    )
    assert f'user_hash="{expected}"' in text
    assert "ada@example.com" not in text


def test_per_registration_false_exports_only_counts() -> None:
    view = view_of(small_fleet(), LabelPolicy(per_registration=False))
    text = b"".join(render(view, now=1_700_003_601.0)).decode()
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert not any(s.startswith("cloudflare_warp_registration_") for s in samples)
    assert any(s.startswith("cloudflare_warp_registrations{") for s in samples)
    assert (
        'cloudflare_warp_registrations_last_seen_before{account_id="abc",threshold="1h"} 1'
        in samples
    )


def test_unchanged_registration_is_not_recompiled() -> None:
    compiler = Compiler(LabelPolicy())
    first = compiler.compile(A, reg("r1"), None)
    assert compiler.compile(A, reg("r1"), first) is first
    changed = compiler.compile(A, reg("r1", revoked=1_700_000_500.0), first)
    assert changed is not first and changed.fleet_key[0] == "revoked"
