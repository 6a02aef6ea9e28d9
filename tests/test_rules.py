"""The Prometheus rules and example configs in prometheus/: promtool/amtool checks and structure."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "prometheus"
ALERTS = PROM / "alerts.yml"
RULES = PROM / "rules.yml"
ALERTS_TEST = PROM / "alerts.test.yml"

EXPECTED_SEVERITIES = {
    "CloudflareWarpRegistrationStale": "warning",
    "CloudflareWarpRegistrationDormant": "info",
    "CloudflareWarpRegistrationRevoked": "info",
    "CloudflareWarpConfiguredRegistrationMissing": "warning",
    "CloudflareWarpExporterApiFailing": "critical",
    "CloudflareWarpExporterAbsent": "critical",
    "CloudflareWarpApiRateLimited": "warning",
}
PER_REGISTRATION_ALERTS = (
    "CloudflareWarpRegistrationStale",
    "CloudflareWarpRegistrationDormant",
    "CloudflareWarpRegistrationRevoked",
)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


def alert_rules() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in data["groups"] for rule in group["rules"]]
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    assert len(alerts) == len(rules), "alerts.yml holds only alerting rules"
    return alerts


def test_promtool_check_rules() -> None:
    result = run(require_tool("promtool"), "check", "rules", ALERTS, RULES)
    assert "SUCCESS: 7 rules found" in result.stdout


def test_promtool_unit_tests() -> None:
    run(require_tool("promtool"), "test", "rules", ALERTS_TEST)


def test_promtool_check_config() -> None:
    result = run(require_tool("promtool"), "check", "config", PROM / "prometheus.yml")
    assert "2 rule files found" in result.stdout


def test_amtool_check_config() -> None:
    run(require_tool("amtool"), "check-config", PROM / "alertmanager.yml")


def test_all_alerts_present_with_severity() -> None:
    alerts = alert_rules()
    assert {name: rule["labels"]["severity"] for name, rule in alerts.items()} == (
        EXPECTED_SEVERITIES
    )


@pytest.mark.parametrize("name", sorted(EXPECTED_SEVERITIES))
def test_alert_has_summary_and_description(name: str) -> None:
    rule = alert_rules()[name]
    assert set(rule["labels"]) == {"severity"}
    for key in ("summary", "description"):
        assert rule["annotations"][key].strip(), f"{name} lacks a {key}"


@pytest.mark.parametrize("name", PER_REGISTRATION_ALERTS)
def test_per_registration_alert_names_device_user_policy_and_last_seen(name: str) -> None:
    rule = alert_rules()[name]
    assert "group_left(" in rule["expr"]
    assert "cloudflare_warp_registration_info" in rule["expr"]
    description = rule["annotations"]["description"]
    for label in ("device_name", "user_email", "policy_name", "registration_id"):
        assert f"$labels.{label}" in description, f"{name} description lacks {label}"
    assert "ago" in description
    assert "humanizeDuration" in description


def test_stale_and_dormant_only_count_active_registrations() -> None:
    alerts = alert_rules()
    for name in ("CloudflareWarpRegistrationStale", "CloudflareWarpRegistrationDormant"):
        expr = " ".join(alerts[name]["expr"].split())
        assert "cloudflare_warp_registration_revoked == 0" in expr
        assert "cloudflare_warp_registration_deleted == 0" in expr


def threshold_table() -> dict[str, tuple[str, str, str]]:
    """The table in the comment block at the top of alerts.yml: alert -> (severity, threshold, for)."""
    table: dict[str, tuple[str, str, str]] = {}
    for line in ALERTS.read_text().splitlines():
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        match = re.match(r"#\s+(CloudflareWarp\w+)\s+(\w+)\s+(.*?)\s+(\d+[smh])\s*$", line)
        if match:
            name, severity, threshold, for_ = match.groups()
            table[name] = (severity, threshold, for_)
    return table


def test_threshold_table_matches_rules() -> None:
    """The thresholds are stated in the header comment and written exactly once in the rules."""
    alerts = alert_rules()
    table = threshold_table()
    assert set(table) == set(alerts)
    for name, (severity, threshold, for_) in table.items():
        rule = alerts[name]
        assert severity == rule["labels"]["severity"], name
        assert for_ == rule.get("for", "0m"), name
        expr = " ".join(rule["expr"].split())
        # The comparisons, ranges and offsets of the table ("> 7 * 86400", "== 0", "[15m]").
        tokens = re.findall(
            r"[<>=]=?\s*\d+(?:\s*\*\s*\d+)?|\[\d+[smhd]\]|offset \d+[smhd]", threshold
        )
        assert tokens or name == "CloudflareWarpExporterAbsent", f"{name}: no threshold found"
        for token in tokens:
            assert token in expr, f"{name}: the table says {token!r}, the expr does not"
            number = re.sub(r"^[<>=]+\s*", "", token)
            if token[0] in "<>=":
                assert expr.count(number) == 1, f"{name}: {number} should appear once"
    stale = " ".join(alerts["CloudflareWarpRegistrationStale"]["expr"].split())
    assert "> 7 * 86400" in stale
    assert alerts["CloudflareWarpRegistrationStale"]["for"] == "1h"
    assert "> 30 * 86400" in " ".join(alerts["CloudflareWarpRegistrationDormant"]["expr"].split())


def test_unit_tests_cover_every_alert_firing() -> None:
    """alerts.test.yml has, for every alert, a case where it fires and one where it does not."""
    data = yaml.safe_load(ALERTS_TEST.read_text())
    assert {"alerts.yml", "rules.yml"} <= set(data["rule_files"])
    firing: set[str] = set()
    silent: set[str] = set()
    for group in data["tests"]:
        for case in group.get("alert_rule_test", []):
            expected = case.get("exp_alerts") or []
            (firing if expected else silent).add(case["alertname"])
            for alert in expected:
                assert alert["exp_labels"]["severity"] == EXPECTED_SEVERITIES[case["alertname"]]
                assert set(alert["exp_annotations"]) == {"summary", "description"}
    assert firing == set(EXPECTED_SEVERITIES)
    assert silent == set(EXPECTED_SEVERITIES)


def test_recording_rule_names_follow_convention() -> None:
    data = yaml.safe_load(RULES.read_text())
    records = [rule["record"] for group in data["groups"] for rule in group["rules"]]
    assert records
    for record in records:
        level, metric, operation = record.split(":")
        assert level and operation, record
        assert metric.startswith("cloudflare_warp_"), record


def test_prometheus_config_scrapes_the_exporter_job() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml", "rules.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "cloudflare-warp"
    assert job["scrape_interval"] == "60s"
    assert job["scrape_timeout"] == "30s"
    assert config["alerting"]["alertmanagers"]
    absent = alert_rules()["CloudflareWarpExporterAbsent"]["expr"]
    assert f'job="{job["job_name"]}"' in absent


def test_alertmanager_routes_every_severity() -> None:
    config = yaml.safe_load((PROM / "alertmanager.yml").read_text())
    routed = {
        matcher for route in config["route"]["routes"] for matcher in route.get("matchers", [])
    }
    for severity in set(EXPECTED_SEVERITIES.values()):
        assert f'severity="{severity}"' in routed
