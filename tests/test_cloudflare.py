"""The API client against the simulated API over loopback: paging, batching, concurrency, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from exporter import __version__
from exporter.budget import RequestBudget
from exporter.cloudflare import CloudflareAPIError, CloudflareClient, Listing
from exporter.fleet import generate_fleet
from exporter.models import Registration
from exporter.simulator import SimulatedCloudflare
from tests.conftest import ACCOUNT, TOKEN


@pytest.fixture
def big_sim() -> Iterator[SimulatedCloudflare]:
    sim = SimulatedCloudflare(
        {ACCOUNT: generate_fleet(1000, now=time.time(), seed=3)}, token=TOKEN, max_per_page=100
    )
    sim.start_in_thread()
    yield sim
    sim.stop_thread()


def client(base_url: str, token: str = TOKEN, **kwargs: Any) -> CloudflareClient:
    return CloudflareClient(
        base_url=base_url, token=SecretStr(token), budget=RequestBudget(1200), **kwargs
    )


def collect(
    base_url: str,
    ids: list[str] | None = None,
    token: str = TOKEN,
    account: str = ACCOUNT,
    **kwargs: Any,
) -> tuple[list[Registration], Listing]:
    got: list[Registration] = []

    async def go() -> Listing:
        api = client(base_url, token, **kwargs)
        try:
            return await api.list_registrations(
                account, ids=ids, deadline=time.monotonic() + 30, sink=got.append
            )
        finally:
            await api.aclose()

    return got, asyncio.run(go())


def list_queries(sim: SimulatedCloudflare) -> list[list[tuple[str, str]]]:
    return [q for p, q in sim.requests if p.endswith("/devices/registrations")]


def test_discovery_follows_the_cursor_until_it_is_empty(
    simulator: SimulatedCloudflare, fleet: list[dict[str, Any]]
) -> None:
    got, listing = collect(simulator.base_url)
    assert sorted(r.id for r in got) == sorted(r["id"] for r in fleet)
    # 60 records, pages capped at 25 by the server although 1000 were asked for: 3 pages.
    queries = list_queries(simulator)
    assert listing.requests == len(queries) == 3
    assert [dict(q).get("cursor") is None for q in queries] == [True, False, False]
    assert all(("status", "all") in q and ("include", "policy") in q for q in queries)


def test_120_ids_take_two_requests(big_sim: SimulatedCloudflare) -> None:
    records = big_sim.records(ACCOUNT)
    ids = [r["id"] for r in records[:120]]
    got, listing = collect(big_sim.base_url, ids)
    assert sorted(r.id for r in got) == sorted(ids)
    queries = list_queries(big_sim)
    assert listing.requests == len(queries) == 2
    assert sorted(len([v for k, v in q if k == "id"]) for q in queries) == [20, 100]


def test_unknown_ids_are_simply_not_returned(big_sim: SimulatedCloudflare) -> None:
    ids = [big_sim.records(ACCOUNT)[0]["id"], "00000000-0000-4000-8000-000000000000"]
    got, _ = collect(big_sim.base_url, ids)
    assert [r.id for r in got] == ids[:1]


def test_requests_in_flight_never_exceed_max_concurrency(big_sim: SimulatedCloudflare) -> None:
    big_sim.latency = 0.05
    ids = [r["id"] for r in big_sim.records(ACCOUNT)]
    got, listing = collect(big_sim.base_url, ids, max_concurrency=3)
    assert len(got) == 1000 and listing.requests == 10
    assert big_sim.max_in_flight == 3


@pytest.mark.parametrize(
    ("token", "account", "status", "code", "message"),
    [
        ("wrong-token", ACCOUNT, 403, 10000, "Authentication error"),
        (
            TOKEN,
            "ffffffffffffffffffffffffffffffff",
            404,
            7003,
            "Could not route to /accounts/..., perhaps your object identifier is invalid?",
        ),
    ],
)
def test_error_envelope_becomes_a_typed_error(
    simulator: SimulatedCloudflare, token: str, account: str, status: int, code: int, message: str
) -> None:
    with pytest.raises(CloudflareAPIError) as caught:
        collect(simulator.base_url, token=token, account=account)
    error = caught.value
    assert (error.status, error.code, error.message) == (status, code, message)
    assert str(error) == f"HTTP {status}, Cloudflare error {code}: {message}"
    assert token not in str(error)


def test_requests_carry_bearer_token_and_user_agent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"success": True, "errors": [], "result": [], "result_info": {"cursor": ""}}
        )

    collect("https://api.example/client/v4", transport=httpx.MockTransport(handler))
    assert len(seen) == 1
    request = seen[0]
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["user-agent"].startswith(f"cloudflare-warp-exporter/{__version__}")
    assert request.url.path == f"/client/v4/accounts/{ACCOUNT}/devices/registrations"


def test_no_token_fails_without_a_request() -> None:
    calls: list[httpx.Request] = []
    api = CloudflareClient(
        base_url="https://api.example/client/v4",
        token=None,
        budget=RequestBudget(10),
        transport=httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(500)),
    )

    async def go() -> None:
        try:
            await api.list_registrations(
                ACCOUNT, deadline=time.monotonic() + 5, sink=lambda r: None
            )
        finally:
            await api.aclose()

    with pytest.raises(CloudflareAPIError, match="no API token"):
        asyncio.run(go())
    assert calls == []
