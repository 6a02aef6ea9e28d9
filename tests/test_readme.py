"""The README stays true: every metric, flag and config key it must document is there."""

from __future__ import annotations

import re

from exporter import metrics
from exporter.cli import parse_args
from exporter.config import ApiConfig, CollectionConfig, MetricsConfig
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_starts_with_the_two_commands() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [
        ["make", "run"],
        ["make", "test"],
    ]


def test_every_metric_is_documented() -> None:
    for metric in metrics.ALL_METRICS:
        assert f"`{metric.name}`" in README, metric.name


def test_every_flag_is_documented() -> None:
    source = (ROOT / "exporter" / "cli.py").read_text()
    flags = set(re.findall(r'"(--[a-z][a-z.-]+)"', source))
    assert flags >= {"--config.file", "--web.listen-address", "--once", "--demo", "--check-config"}
    parse_args([])  # the parser builds
    for flag in flags:
        assert f"`{flag}" in README, flag


def test_every_config_key_is_documented() -> None:
    for section, model in (
        ("api", ApiConfig),
        ("collection", CollectionConfig),
        ("metrics", MetricsConfig),
    ):
        for key in model.model_fields:
            assert f"`{section}.{key}`" in README, f"{section}.{key}"
    for key in ("account_id", "registrations", "discover"):
        assert f"`accounts[].{key}`" in README
