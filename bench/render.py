"""Render-only comparison: our cached renderer against prometheus_client.generate_latest."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from exporter import metrics as m
from exporter.exposition import (
    VALUE_FAMILIES,
    AccountView,
    Compiler,
    ExporterView,
    LabelPolicy,
    info_values,
    render,
)
from exporter.models import Registration, parse_registration

ACCOUNT = "0d3a0e1f5c6b4a2d9e8f7a6b5c4d3e2f"


def build_view(
    records: list[dict[str, object]], now: float
) -> tuple[ExporterView, list[Registration]]:
    regs = [r for r in (parse_registration(x, now) for x in records) if isinstance(r, Registration)]
    compiler = Compiler(LabelPolicy())
    compiled = sorted((compiler.compile(ACCOUNT, r, None) for r in regs), key=lambda c: c.id)
    counts = Counter(c.fleet_key for c in compiled)
    account = AccountView(
        ACCOUNT,
        compiled,
        [],
        sorted(counts.items()),
        sorted(c.last_seen for c in compiled if c.active),
        True,
        1.0,
        now,
        [("list", "200", 1)],
        [],
    )
    return ExporterView([account], 0, None, True, now, "bench", "3.11"), regs


class SameFamilies(Collector):
    """The same per-registration families, built the prometheus_client way on each collect."""

    def __init__(self, regs: list[Registration]) -> None:
        self.regs = regs

    def collect(self):  # type: ignore[no-untyped-def]
        ident = ["account_id", "registration_id"]
        info = InfoMetricFamily(
            m.REGISTRATION_INFO.name.removesuffix("_info"), m.REGISTRATION_INFO.help, labels=ident
        )
        values = {
            metric: GaugeMetricFamily(metric.name, metric.help, labels=ident)
            for metric in (*VALUE_FAMILIES, m.LAST_SEEN_AGE)
        }
        now = time.time()
        for r in self.regs:
            labels = [ACCOUNT, r.id]
            described = info_values(r)
            info.add_metric(labels, {name: described[name] for name in m.INFO_LABELS})
            values[m.LAST_SEEN].add_metric(labels, r.last_seen)
            if r.created is not None:
                values[m.CREATED].add_metric(labels, r.created)
            if r.updated is not None:
                values[m.UPDATED].add_metric(labels, r.updated)
            values[m.REVOKED].add_metric(labels, 0 if r.revoked is None else 1)
            values[m.DELETED].add_metric(labels, 0 if r.deleted is None else 1)
            if r.revoked is not None:
                values[m.REVOKED_AT].add_metric(labels, r.revoked)
            if r.deleted is not None:
                values[m.DELETED_AT].add_metric(labels, r.deleted)
            values[m.LAST_SEEN_AGE].add_metric(labels, now - r.last_seen)
        yield info
        yield from values.values()


def median_seconds(func: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def compare(records: list[dict[str, object]], runs: int) -> dict[str, float]:
    now = time.time()
    view, regs = build_view(records, now)
    registry = CollectorRegistry()
    registry.register(SameFamilies(regs))
    ours = median_seconds(lambda: b"".join(render(view, time.time())), runs)
    theirs = median_seconds(lambda: generate_latest(registry), runs)
    return {"ours": ours, "generate_latest": theirs, "ratio": theirs / ours}
