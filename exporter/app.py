"""The running exporter: settings, API client, collection, and configuration reloads."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterator

import httpx

from exporter import __version__
from exporter.budget import RequestBudget
from exporter.cloudflare import ApiStats, CloudflareClient
from exporter.collection import Collection
from exporter.config import ConfigError, Settings, load_settings
from exporter.exposition import Compiler, ExporterView, LabelPolicy, render
from exporter.logs import REDACTOR

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_HEADER = "x-prometheus-scrape-timeout-seconds"
SCRAPE_TIMEOUT_MARGIN = 0.5
"""Seconds kept back from Prometheus's scrape timeout to render and send the answer."""


def label_policy(settings: Settings) -> LabelPolicy:
    metrics = settings.config.metrics
    key = settings.user_hash_key.get_secret_value().encode() if settings.user_hash_key else b""
    return LabelPolicy(
        per_registration=metrics.per_registration,
        user_labels=metrics.user_labels,
        user_hash_key=key,
        drop_labels=frozenset(metrics.drop_labels),
    )


class Exporter:
    def __init__(
        self,
        settings: Settings,
        *,
        loader: Callable[[], Settings] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``loader`` reads the configuration again on reload (default: the file it came from)."""
        self._loader = loader or (lambda: load_settings(self.settings.source))
        self._transport = transport
        self.budget = RequestBudget(settings.config.api.max_requests_per_5m)
        self.stats = ApiStats()
        self.settings = settings
        self.collection = self._collection(settings, None)
        self.reload_ok = True
        self.reload_time = time.time()

    def _collection(self, settings: Settings, previous: Collection | None) -> Collection:
        api = settings.config.api
        if settings.token is not None:
            REDACTOR.secrets.add(settings.token.get_secret_value())
        self.budget.limit = api.max_requests_per_5m
        client = CloudflareClient(
            base_url=settings.base_url,
            token=settings.token,
            budget=self.budget,
            stats=self.stats,
            timeout_seconds=api.timeout_seconds,
            max_concurrency=api.max_concurrency,
            max_retries=api.max_retries,
            transport=self._transport,
        )
        return Collection(settings.config, client, Compiler(label_policy(settings)), previous)

    async def reload(self) -> bool:
        """Re-read the config and token files; keep the running config when the new one fails."""
        try:
            settings = self._loader()
        except ConfigError as exc:
            self.reload_ok = False
            log.error("reload failed, keeping the running configuration: %s", exc)
            return False
        old = self.collection
        await old.stop()
        self.collection = self._collection(settings, old)
        await old.client.aclose()
        self.settings = settings
        self.reload_ok = True
        self.reload_time = time.time()
        log.info("configuration reloaded from %s", settings.source)
        return True

    def scrape_timeout(self, header: str | None) -> float:
        """How long a scrape may wait for data: Prometheus's timeout less a margin, if sent."""
        if header:
            try:
                return max(0.1, float(header) - SCRAPE_TIMEOUT_MARGIN)
            except ValueError:
                pass
        return self.settings.config.api.timeout_seconds

    def view(self) -> ExporterView:
        return ExporterView(
            accounts=self.collection.views(),
            budget_exhausted=self.stats.budget_exhausted,
            ratelimit_remaining=self.stats.ratelimit_remaining,
            config_reload_ok=self.reload_ok,
            config_reload_time=self.reload_time,
            version=__version__,
            python_version=platform.python_version(),
        )

    async def scrape(self, timeout: float, openmetrics: bool = False) -> Iterator[bytes]:
        """Refresh if due, then the exposition as lazily rendered chunks."""
        await self.collection.ensure_fresh(timeout)
        return render(self.view(), time.time(), openmetrics)

    async def close(self) -> None:
        await self.collection.stop()
        await self.collection.client.aclose()
