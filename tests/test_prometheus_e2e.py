"""End to end with a real Prometheus: exporter -> simulator, Prometheus scraping the exporter.

A real ``prometheus`` server (the Debian package's binary) loads prometheus/prometheus.yml,
adapted to loopback ports and a one-second scrape and evaluation interval, with both rule files.
Through its HTTP API the test then runs every PromQL expression of the Grafana dashboard, every
alert expression of alerts.yml, and checks the rule groups' health. Expected values are computed
independently from the simulator's raw records.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.simulator import SimulatedCloudflare
from tests.conftest import ACCOUNT, ROOT, TOKEN, ExporterProcess, free_port, require_tool
from tests.test_dashboard import DASHBOARD, all_panels

PROM = ROOT / "prometheus"
ALERTS = PROM / "alerts.yml"
RULES = PROM / "rules.yml"
JOB = "cloudflare-warp"
MISSING = "00000000-0000-4000-8000-00000000dead"
DAY = 86400.0
# No record may sit this close to an age threshold, so the exact sets below cannot flap.
MARGIN = 60.0

# Grafana's variables as the dashboard's default selection ("All") and a short time range.
VARIABLES = {
    "${datasource}": "prometheus",
    "$datasource": "prometheus",
    "${account_id}": ".*",
    "$account_id": ".*",
    "${policy_name}": ".*",
    "$policy_name": ".*",
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
}
RANGE_SECONDS = 60
STEP_SECONDS = 5

# Panels that may legitimately return no data for the simulator's fleet, with the reason.
MAY_BE_EMPTY = {
    "Invalid records": (
        "the simulator's fleet has no malformed record, so cloudflare_warp_invalid_records_total "
        "has no series"
    ),
}


def unix(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def substitute(expr: str) -> str:
    # Longest names first so that "$__interval" cannot eat the start of a longer variable.
    for variable in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, VARIABLES[variable])
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


class PrometheusServer:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (
            f"{path} {params}: HTTP {response.status_code} {body}"
        )
        assert not body.get("warnings"), f"{path} {params}: warnings {body['warnings']}"
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, end: float) -> list[dict[str, Any]]:
        data = self.api(
            "query_range", query=expr, start=end - RANGE_SECONDS, end=end, step=STEP_SECONDS
        )
        assert data["resultType"] == "matrix", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result


def wait_for(
    what: str, check: Callable[[], bool], server: PrometheusServer, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"prometheus exited while waiting for {what}:\n{server.log()}")
        try:
            if check():
                return
        except (httpx.TransportError, AssertionError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{server.log()}")


def prometheus_config(tmp_path: Path, exporter_address: str) -> Path:
    """prometheus/prometheus.yml, pointed at the exporter, with fast scrapes and evaluations."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM / name) for name in config["rule_files"]]
    assert sorted(config["rule_files"]) == sorted([str(ALERTS), str(RULES)])
    config.pop("alerting", None)  # no Alertmanager in this test
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    (static,) = job["static_configs"]
    static["targets"] = [exporter_address]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[Path], PrometheusServer]]:
    servers: list[PrometheusServer] = []

    def start(config_path: Path) -> PrometheusServer:
        binary = require_tool("prometheus")
        port = free_port()
        log_path = tmp_path / "prometheus.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        server = PrometheusServer(process, f"http://127.0.0.1:{port}", log_path)
        servers.append(server)
        wait_for(
            "/-/ready",
            lambda: httpx.get(server.url + "/-/ready", timeout=2).status_code == 200,
            server,
            timeout=30,
        )
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


def rule_groups(path: Path) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return groups


def ids(result: list[dict[str, Any]]) -> set[str]:
    return {sample["metric"]["registration_id"] for sample in result}


def scalar(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def dashboard_targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel, target)
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def variable_selectors() -> list[tuple[str, str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *(\w+)\)", var["definition"])
            assert match, var["definition"]
            out.append((var["name"], match.group(1), match.group(2)))
    return out


@pytest.mark.timeout(180)
def test_prometheus_scrapes_and_evaluates_rules_and_dashboard(
    simulator: SimulatedCloudflare,
    exporter_process: Callable[..., ExporterProcess],
    start_prometheus: Callable[[Path], PrometheusServer],
    tmp_path: Path,
) -> None:
    # Both tools up front: under CI=true a missing one fails the test instead of skipping it.
    require_tool("prometheus")
    promtool = require_tool("promtool")
    started = time.monotonic()
    records = simulator.records(ACCOUNT)
    assert MISSING not in {r["id"] for r in records}
    exporter = exporter_process(
        {
            "accounts": [
                {"account_id": ACCOUNT, "registrations": [r["id"] for r in records] + [MISSING]}
            ],
            "collection": {"min_interval_seconds": 0},
        },
        env={"CLOUDFLARE_API_TOKEN": TOKEN, "CLOUDFLARE_BASE_URL": simulator.base_url},
    )
    config_path = prometheus_config(tmp_path, exporter.url.removeprefix("http://"))
    check = subprocess.run(
        [promtool, "check", "config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "2 rule files found" in check.stdout

    prom = start_prometheus(config_path)
    recorded = sorted({r["record"] for g in rule_groups(RULES) for r in g["rules"]})

    def scraped_twice_and_recorded() -> bool:
        up = prom.query(f'count_over_time(up{{job="{JOB}"}}[1m])')
        if not up or float(up[0]["value"][1]) < 2:
            return False
        if not prom.query(f'cloudflare_warp_up{{job="{JOB}"}} == 1'):
            return False
        thresholds = prom.query(
            "count by (threshold) "
            "(account_id_policy_name_threshold:cloudflare_warp_registrations_last_seen_before:count)"
        )
        if len(thresholds) != 4:
            return False
        # Every recording rule has at least two evaluations with data.
        return all(prom.query(f"min(count_over_time({name}[1m])) >= 2") for name in recorded)

    wait_for("two scrapes and recorded series", scraped_twice_and_recorded, prom, timeout=60)
    assert scalar(prom.query(f'up{{job="{JOB}"}}')) == 1
    ready_after = time.monotonic() - started

    # -- what the simulator's fleet should produce, from its raw records -------------------
    now = time.time()
    active = [r for r in records if not r["revoked_at"] and not r["deleted_at"]]
    deleted = {r["id"] for r in records if r["deleted_at"]}
    revoked = {r["id"] for r in records if r["revoked_at"] and not r["deleted_at"]}
    inactive = {r["id"] for r in records if r["revoked_at"] or r["deleted_at"]}

    def age(record: dict[str, Any]) -> float:
        return now - unix(record["last_seen_at"])

    for record in records:
        for threshold in (3600, DAY, 7 * DAY, 30 * DAY):
            assert abs(age(record) - threshold) > MARGIN, (record["id"], threshold)
        if record["revoked_at"]:
            assert abs(now - unix(record["revoked_at"]) - 3600) > MARGIN, record["id"]

    def older(seconds: float, among: list[dict[str, Any]]) -> set[str]:
        return {r["id"] for r in among if age(r) > seconds}

    stale, dormant = older(7 * DAY, active), older(30 * DAY, active)
    recently_revoked = {
        r["id"] for r in records if r["revoked_at"] and now - unix(r["revoked_at"]) < 3600
    }
    # The fleet exercises what the checks distinguish: stale and dormant active registrations,
    # and revoked or deleted ones that were last seen long ago (which must not alert).
    assert stale and dormant and dormant < stale
    assert older(7 * DAY, [r for r in records if r["id"] in inactive])
    assert revoked and deleted

    # -- alerts.yml: every alert expression, evaluated now ---------------------------------
    alerts = {
        rule["alert"]: rule["expr"] for group in rule_groups(ALERTS) for rule in group["rules"]
    }
    expected_alerts: dict[str, set[str] | None] = {
        "CloudflareWarpRegistrationStale": stale,
        "CloudflareWarpRegistrationDormant": dormant,
        "CloudflareWarpRegistrationRevoked": recently_revoked,
        "CloudflareWarpConfiguredRegistrationMissing": {MISSING},
        "CloudflareWarpExporterApiFailing": None,
        "CloudflareWarpExporterAbsent": None,
        "CloudflareWarpApiRateLimited": None,
    }
    assert set(alerts) == set(expected_alerts), "a new alert needs an expectation here"
    by_id = {r["id"]: r for r in records}
    for name, expr in alerts.items():
        result = prom.query(expr, at=now)
        expected = expected_alerts[name]
        if expected is None:
            assert result == [], f"{name} should not fire: {result}"
            continue
        assert ids(result) == expected, (
            f"{name}: extra {sorted(ids(result) - expected)}, missing {sorted(expected - ids(result))}"
        )
        assert len(result) == len(expected), f"{name}: duplicate series {result}"
        for sample in result:
            labels = sample["metric"]
            assert labels["account_id"] == ACCOUNT and labels["job"] == JOB, labels
            source = by_id.get(labels["registration_id"])
            if source is not None:
                # The join with cloudflare_warp_registration_info brought the device's name.
                assert labels["device_name"] == source["device"]["name"], labels
    assert not stale & inactive

    # The stale alert's value is the age in seconds, as the annotations render it.
    for sample in prom.query(alerts["CloudflareWarpRegistrationStale"], at=now):
        expected_age = age(by_id[sample["metric"]["registration_id"]])
        assert abs(float(sample["value"][1]) - expected_age) < 1, sample

    # -- the dashboard: every expression, with the default variable selection -------------
    counts = {
        "Active": len(active),
        "Stale (> 7d)": len(stale),
        "Dormant (> 30d)": len(dormant),
        "Revoked": len(revoked),
        "Deleted": len(deleted),
        "Not found": 1,
        "Up": 1,
        "Config reload": 1,
    }
    buckets = {
        "A": len(active) - len(older(3600, active)),
        "B": len(older(3600, active)) - len(older(DAY, active)),
        "C": len(older(DAY, active)) - len(older(7 * DAY, active)),
        "D": len(stale) - len(dormant),
        "E": len(dormant),
    }
    assert all(counts.values()), counts
    targets = dashboard_targets()
    assert len(targets) >= 20
    seen_titles = set()
    empty = set()
    for panel, target in targets:
        title, where = panel["title"], f"{panel['title']}/{target['refId']}"
        seen_titles.add(title)
        expr = substitute(target["expr"])
        if target.get("instant"):
            result = prom.query(expr, at=now)
        else:
            result = prom.query_range(expr, end=now)
        if not result:
            empty.add(title)
            assert title in MAY_BE_EMPTY, f"{where} returned no data: {expr}"
            continue
        if title in counts:
            assert scalar(result) == counts[title], (where, result)
        if title == "Last-seen age of active registrations":
            assert scalar(result) == buckets[target["refId"]], (where, result)
        if title == "Stalest active registrations":
            assert ids(result) <= {r["id"] for r in active}
            assert stale <= ids(result), "every stale registration is in the table"
            assert len(result) == min(50, len(active))
        if title == "Registrations by status":
            statuses = {s["metric"]["status"]: float(s["values"][-1][1]) for s in result}
            assert statuses == {
                "active": len(active),
                "revoked": len(revoked),
                "deleted": len(deleted),
            }
    assert set(MAY_BE_EMPTY) <= seen_titles, "MAY_BE_EMPTY names panels of the dashboard"

    # The template variables' selectors find the account and the fleet's policies.
    fleet_policies = {(r.get("policy") or {}).get("name", "") for r in records}
    for name, selector, label in variable_selectors():
        result = prom.query(substitute(selector), at=now)
        values = {sample["metric"].get(label, "") for sample in result}
        if name == "account_id":
            assert values == {ACCOUNT}
        elif name == "policy_name":
            assert values == fleet_policies, values
        else:
            assert values, name

    # -- rule groups: all loaded, every rule evaluated with health ok ----------------------
    expected_groups = {
        (str(path), group["name"]): len(group["rules"])
        for path in (ALERTS, RULES)
        for group in rule_groups(path)
    }

    def all_rules_evaluated() -> bool:
        groups = prom.api("rules")["groups"]
        return all(rule["health"] != "unknown" for g in groups for rule in g["rules"])

    wait_for("every rule evaluated", all_rules_evaluated, prom, timeout=20)
    groups = prom.api("rules")["groups"]
    assert {(g["file"], g["name"]): len(g["rules"]) for g in groups} == expected_groups
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (group["name"], rule)
            assert not rule.get("lastError"), (group["name"], rule)
    assert prom.process.poll() is None, prom.log()
    elapsed = time.monotonic() - started
    print(f"ready after {ready_after:.1f}s, done after {elapsed:.1f}s; empty: {sorted(empty)}")
