"""The Grafana dashboard and provisioning files in grafana/: structure, metric names, PromQL."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.metrics import ALL_METRICS
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "cloudflare-warp-fleet.json"
PROVISIONING = ROOT / "grafana" / "provisioning"
RULES = ROOT / "prometheus" / "rules.yml"
ALERTS_TEST = ROOT / "prometheus" / "alerts.test.yml"

DATASOURCE = "${datasource}"
STAT_TITLES = ("Active", "Stale (> 7d)", "Dormant (> 30d)", "Revoked", "Deleted", "Not found")
ALL = {"$account_id": ".*", "$policy_name": ".*"}

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def panel_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"{panel['title']}/{target['refId']}", target["expr"])
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables the way Grafana would for the given selection."""
    for variable, value in {
        **values,
        "$__rate_interval": "5m",
        "$__interval": "1m",
        "$__range": "1h",
    }.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, expr
    return expr


def recording_rules() -> set[str]:
    data = yaml.safe_load(RULES.read_text())
    return {rule["record"] for group in data["groups"] for rule in group["rules"]}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a regex scan, enough for these dashboards)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr):
        name = match.group(1)
        if name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def test_dashboard_basics(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "cloudflare-warp-fleet"
    assert dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    ids = [panel["id"] for panel in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_variables(dashboard: dict[str, Any]) -> None:
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    for name in ("account_id", "policy_name"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"]["uid"] == DATASOURCE
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        assert query.startswith("label_values(") and query.endswith(f", {name})"), query
        assert var["multi"] is True
        assert var["includeAll"] is True
        # "All" must also match registrations whose label is empty (e.g. no policy).
        assert var["allValue"] == ".*"


def test_stat_panels_for_the_six_counts(dashboard: dict[str, Any]) -> None:
    stats = {
        panel["title"]: panel
        for panel in all_panels(dashboard["panels"])
        if panel["type"] == "stat"
    }
    for title in STAT_TITLES:
        assert title in stats, f"no stat panel {title!r}"
        assert len(stats[title]["targets"]) == 1


def test_every_target_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    with_targets = [p for p in all_panels(dashboard["panels"]) if p.get("targets")]
    assert len(with_targets) >= 15
    for panel in with_targets:
        assert panel["datasource"]["uid"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]
            assert target["datasource"]["type"] == "prometheus", panel["title"]


def test_panels_filter_by_the_variables(dashboard: dict[str, Any]) -> None:
    for where, expr in panel_exprs(dashboard):
        if "account_id" in expr:
            assert 'account_id=~"$account_id"' in expr, where
        if "policy_name=" in expr:
            assert 'policy_name=~"$policy_name"' in expr, where


def test_metric_names_are_exported_or_recorded(dashboard: dict[str, Any]) -> None:
    known = {metric.name for metric in ALL_METRICS} | recording_rules()
    used: set[str] = set()
    for where, expr in panel_exprs(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert names <= known, f"{where}: unknown metrics {sorted(names - known)}"
        used |= names
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            used |= metric_names(var["definition"])
    # The scan is not vacuous: it sees both raw metrics and recording rules.
    assert "cloudflare_warp_registration_info" in used
    assert "cloudflare_warp_up" in used
    assert recording_rules() <= used, "every recording rule is used by the dashboard"


def test_metric_name_scan() -> None:
    assert metric_names(
        'sum by (code, endpoint) (rate(cloudflare_warp_api_requests_total{account_id=~"a"}[5m]))'
        " * on(account_id) group_left(policy_name) a:b:c or vector(0)"
    ) == {"cloudflare_warp_api_requests_total", "a:b:c"}


def test_exprs_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses every panel expression and variable selector (as recording rules)."""
    exprs = [expr for _, expr in panel_exprs(dashboard)]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *\w+\)", var["definition"])
            assert match, var["definition"]
            exprs.append(match.group(1))
    rules = [
        {"record": f"dashboard:expr_{index}:check", "expr": substitute(expr, ALL)}
        for index, expr in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def stat_expr(dashboard: dict[str, Any], title: str) -> str:
    for panel in all_panels(dashboard["panels"]):
        if panel["title"] == title:
            expr: str = panel["targets"][0]["expr"]
            return expr
    raise AssertionError(title)


def panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    for candidate in all_panels(dashboard["panels"]):
        if candidate["title"] == title:
            return candidate
    raise AssertionError(title)


A = "0123456789abcdef0123456789abcdef"
STALEST_LABELS = {
    "job": "cloudflare-warp",
    "instance": "cloudflare-warp-exporter:9787",
    "account_id": A,
}


def sample(labels: dict[str, str], value: float) -> dict[str, Any]:
    inner = ", ".join(f'{key}="{val}"' for key, val in sorted(labels.items()))
    return {"labels": "{" + inner + "}", "value": value}


def test_queries_on_the_alert_test_fleet(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Evaluate the main panels' queries on the fleet of prometheus/alerts.test.yml, at 65m.

    There: account A has active R1 (8 days, policy Default), R2 (40 days, Servers), R5 (seen
    now, Default), revoked R3 and R6, deleted R4 and a configured R7 that is not found; account
    B only exports fleet gauges (5 active; 4, 3, 2, 1 not seen for 1h, 1d, 7d, 30d).
    """
    fleet = yaml.safe_load(ALERTS_TEST.read_text())["tests"][0]
    cases: list[dict[str, Any]] = []

    def expect(expr: str, values: dict[str, str], samples: list[dict[str, Any]]) -> None:
        cases.append({"expr": substitute(expr, values), "eval_time": "65m", "exp_samples": samples})

    selections = (
        (ALL, (8, 4, 2, 2, 1, 1)),
        ({"$account_id": A, "$policy_name": "Default"}, (2, 1, 0, 2, 1, 1)),
        ({"$account_id": A, "$policy_name": "Servers"}, (1, 1, 1, 0, 0, 1)),
    )
    for values, counts in selections:
        for title, count in zip(STAT_TITLES, counts, strict=True):
            expect(stat_expr(dashboard, title), values, [{"labels": "{}", "value": count}])

    # Distribution of last-seen age, all accounts: 8 active = 2 + 1 + 1 + 2 + 2.
    distribution = panel(dashboard, "Last-seen age of active registrations")
    for target, count in zip(distribution["targets"], (2, 1, 1, 2, 2), strict=True):
        expect(target["expr"], ALL, [{"labels": "{}", "value": count}])

    # Stalest active registrations: R2, R1 and R5 with their descriptive labels.
    stalest = panel(dashboard, "Stalest active registrations")["targets"][0]["expr"]
    r1 = {
        **STALEST_LABELS,
        "registration_id": "11111111-1111-4111-8111-111111111111",
        "device_name": "alice-laptop",
        "user_email": "alice@example.com",
        "policy_name": "Default",
        "client_version": "2024.6.415.0",
        "tunnel_type": "masque",
    }
    r2 = {
        **STALEST_LABELS,
        "registration_id": "22222222-2222-4222-8222-222222222222",
        "device_name": "build-server-02",
        "policy_name": "Servers",
        "client_version": "2023.10.120.0",
        "tunnel_type": "wireguard",
    }
    r5 = {
        **STALEST_LABELS,
        "registration_id": "55555555-5555-4555-8555-555555555555",
        "device_name": "dave-laptop",
        "user_email": "dave@example.com",
        "policy_name": "Default",
        "client_version": "2024.3.409.0",
        "tunnel_type": "wireguard",
    }
    expect(
        stalest,
        ALL,
        [sample(r2, 40 * 86400 + 3900), sample(r1, 8 * 86400 + 3900), sample(r5, 0)],
    )
    expect(
        stalest,
        {"$account_id": A, "$policy_name": "Servers"},
        [sample(r2, 40 * 86400 + 3900)],
    )

    test_file = tmp_path / "dashboard.test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(RULES)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": fleet["interval"],
                        "input_series": fleet["input_series"],
                        "promql_expr_test": cases,
                    }
                ],
            },
            sort_keys=False,
        )
    )
    result = subprocess.run(
        [require_tool("promtool"), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_stalest_table_shows_age_in_human_units(dashboard: dict[str, Any]) -> None:
    table = panel(dashboard, "Stalest active registrations")
    assert table["type"] == "table"
    (target,) = table["targets"]
    assert target["format"] == "table"
    assert target["instant"] is True
    assert "topk(" in target["expr"]
    assert "group_left(" in target["expr"]
    rename = table["transformations"][0]["options"]["renameByName"]
    for label in ("device_name", "policy_name", "client_version", "tunnel_type"):
        assert label in rename
    (override,) = [
        o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == rename["Value"]
    ]
    units = [p["value"] for p in override["properties"] if p["id"] == "unit"]
    assert units == ["dtdurations"]


def test_fleet_splits_and_health_panels(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(expr for _, expr in panel_exprs(dashboard))
    for label in ("tunnel_type", "key_type", "client_version", "policy_name"):
        assert f"sum by ({label})" in exprs, label
    for metric in (
        "cloudflare_warp_up",
        "cloudflare_warp_scrape_duration_seconds",
        "cloudflare_warp_api_requests_total",
    ):
        assert metric in exprs, metric
    assert "sum by (code" in exprs


def test_datasource_provisioning() -> None:
    files = sorted((PROVISIONING / "datasources").glob("*.yml"))
    assert files
    (config,) = [yaml.safe_load(path.read_text()) for path in files]
    assert config["apiVersion"] == 1
    (datasource,) = config["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True


def test_dashboard_provisioning() -> None:
    files = sorted((PROVISIONING / "dashboards").glob("*.yml"))
    assert files
    (config,) = [yaml.safe_load(path.read_text()) for path in files]
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    # The provider directory is where grafana/dashboards is mounted; the dashboard is there.
    assert DASHBOARD.parent.name == Path(provider["options"]["path"]).name
