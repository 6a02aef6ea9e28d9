"""An in-process exporter behind its real HTTP server, against the simulator over loopback.

Shared by the resilience tests: the exporter's event loop runs in the test (``asyncio.run``),
the simulated API in its own thread, and every byte between them crosses real sockets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.config import Settings, parse_config, resolve_settings
from exporter.fleet import generate_fleet
from exporter.httpserver import HttpServer
from exporter.server import Routes
from exporter.simulator import SimulatedCloudflare
from tests.conftest import NOW, TOKEN

T = TypeVar("T")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one test's coroutine on a fresh loop, with a generous guard against hangs."""

    async def guarded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())


def settings_for(sim: SimulatedCloudflare, config: dict[str, Any], token: str = TOKEN) -> Settings:
    environ = {"CLOUDFLARE_API_TOKEN": token, "CLOUDFLARE_BASE_URL": sim.base_url}
    return resolve_settings(parse_config(config, "test.yaml"), "test.yaml", environ)


def start_simulator(accounts: dict[str, int], **kwargs: Any) -> SimulatedCloudflare:
    """A simulator in a thread with ``count`` generated records per account."""
    fleets = {
        account: generate_fleet(count, now=NOW, seed=index)
        for index, (account, count) in enumerate(accounts.items())
    }
    sim = SimulatedCloudflare(fleets, token=TOKEN, **kwargs)
    sim.start_in_thread()
    return sim


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(parsed: Samples, name: str, **labels: str) -> float | None:
    return parsed.get((name, frozenset(labels.items())))


def series(parsed: Samples, name: str, **labels: str) -> list[dict[str, str]]:
    """Label sets of ``name``'s samples that carry all of ``labels``."""
    wanted = set(labels.items())
    return [dict(lbls) for n, lbls in parsed if n == name and wanted <= lbls]


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


class Harness:
    """The exporter as it serves: ``Routes`` on an ``HttpServer`` bound to loopback."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.exporter = Exporter(settings, **kwargs)
        self._server = HttpServer(Routes(self.exporter, ready=lambda: True))
        self.url = ""
        self.http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Harness:
        host, port = await self._server.start("127.0.0.1", 0)
        self.url = f"http://{host}:{port}"
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        self.http = httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.http is not None
        await self.http.aclose()
        await self._server.close(grace=0.5)
        await self.exporter.close()

    async def get(self, path: str = "/metrics", **kwargs: Any) -> httpx.Response:
        assert self.http is not None
        return await self.http.get(path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        assert self.http is not None
        return await self.http.post(path, **kwargs)

    async def scrape(self, **kwargs: Any) -> tuple[str, Samples]:
        response = await self.get("/metrics", **kwargs)
        assert response.status_code == 200, response.text
        return response.text, parse(response.text)


def error_lines(records: list[logging.LogRecord]) -> Iterator[str]:
    """The exporter's own error messages (not asyncio's, say, from another test's loop)."""
    for record in records:
        if record.levelno >= logging.ERROR and record.name.startswith("exporter"):
            yield record.getMessage()
