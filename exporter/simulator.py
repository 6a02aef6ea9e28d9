"""A simulated Cloudflare API for WARP registrations, served over real loopback HTTP.

It backs ``--demo``, the tests and the benchmark. It implements the list endpoint (``id``,
``status``, ``seen_after``/``seen_before``, ``per_page``, opaque ``cursor``, ``include=policy``)
and the single-registration GET, checks the bearer token, keeps Cloudflare's own limit of 1,200
requests per 5 minutes (answering 429 with ``Retry-After`` past it), sends a ``Ratelimit``
header, and can be told to misbehave (:meth:`SimulatedCloudflare.set_fault`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

from exporter.httpserver import HttpServer, Request, Response

Fault = Literal[
    "server_error",
    "bad_gateway_html",
    "truncated_json",
    "success_false",
    "wrong_result_type",
    "repeat_cursor",
    "huge_body",
    "hang",
    "rate_limited",
    "invalid_records",
]
API_PREFIX = "/client/v4"
LIMIT_PER_5M = 1200
MAX_PER_PAGE = 1000
DEFAULT_PER_PAGE = 25
_PATH = re.compile(
    r"^/client/v4/accounts/(?P<account>[^/]+)/devices/registrations(?:/(?P<id>[^/]+))?$"
)
INVALID_RECORDS: tuple[dict[str, Any], ...] = (
    {"last_seen_at": "2025-01-01T00:00:00Z", "device": {"id": "x", "name": "no id"}},
    {"id": "bad-no-last-seen", "device": {"id": "x", "name": "no last seen"}},
    {"id": "bad-timestamp", "last_seen_at": "last tuesday"},
    {"id": "bad-future", "last_seen_at": "2999-01-01T00:00:00Z"},
)


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def _envelope(result: object, result_info: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return json.dumps(body).encode()


def _error(status: int, code: int, message: str, **extra: str) -> Response:
    body = {"success": False, "errors": [{"code": code, "message": message}], "messages": []}
    response = Response(status, (json.dumps(body).encode(),), "application/json")
    response.headers.extend(extra.items())
    return response


class SimulatedCloudflare:
    """The API for one token over a set of accounts. Records are API-shaped dicts."""

    def __init__(
        self,
        accounts: dict[str, Sequence[dict[str, Any]]],
        *,
        token: str,
        latency: float = 0.0,
        max_per_page: int = MAX_PER_PAGE,
        online: Iterable[str] = (),
        limit_per_5m: int = LIMIT_PER_5M,
    ) -> None:
        self.token = token
        self.latency = latency
        self.max_per_page = max_per_page
        self.limit_per_5m = limit_per_5m
        self.online = set(online)
        """Ids whose last_seen_at follows the clock, like a device that is connected now."""
        self.requests: list[tuple[str, list[tuple[str, str]]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._accounts: dict[str, dict[str, dict[str, Any]]] = {}
        self._encoded: dict[str, bytes] = {}
        self._sent: deque[float] = deque()
        self._fault: Fault | None = None
        self._fault_left: int | None = None
        self.retry_after = 30
        self._server = HttpServer(self.handle, server_name="simulated-cloudflare")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.base_url = ""
        for account_id, records in accounts.items():
            self.replace(account_id, records)

    # -- the fleet -------------------------------------------------------------------------

    def replace(self, account_id: str, records: Iterable[dict[str, Any]]) -> None:
        """Set an account's whole fleet (records keep their order, sorted by id on listing)."""
        self._accounts[account_id] = {r["id"]: r for r in records}
        self._encoded.clear()

    def records(self, account_id: str) -> list[dict[str, Any]]:
        return list(self._accounts[account_id].values())

    def set_fault(self, fault: Fault | None, times: int | None = None) -> None:
        """Misbehave on the next ``times`` requests (for ever when None); None heals."""
        self._fault = fault
        self._fault_left = times

    def request_count(self, kind: str = "") -> int:
        return sum(1 for path, _ in self.requests if path.endswith(kind))

    # -- serving ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        bound_host, bound_port = await self._server.start(host, port)
        self.base_url = f"http://{bound_host}:{bound_port}{API_PREFIX}"
        return self.base_url

    async def close(self) -> None:
        await self._server.close(grace=0.1)

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve from a thread of its own (for tests that run the exporter as a process)."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            loop.run_until_complete(self.start(host, port))
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="simulated-cloudflare", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("simulator did not start")
        return self.base_url

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _take_fault(self) -> Fault | None:
        fault = self._fault
        if fault is not None and self._fault_left is not None:
            self._fault_left -= 1
            if self._fault_left <= 0:
                self._fault = None
        return fault

    def _ratelimit(self) -> tuple[int, Response | None]:
        now = time.monotonic()
        while self._sent and self._sent[0] <= now - 300:
            self._sent.popleft()
        if len(self._sent) >= self.limit_per_5m:
            return 0, _error(
                429,
                971,
                "Please wait and consider throttling your request speed",
                **{"Retry-After": str(self.retry_after)},
            )
        self._sent.append(now)
        return self.limit_per_5m - len(self._sent), None

    async def handle(self, request: Request) -> Response:
        self.requests.append((request.path, request.query))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        started = time.monotonic()
        try:
            response = await self._handle(request)
            # The latency includes the server's own work, as a real API's latency does.
            await asyncio.sleep(max(0.0, self.latency - (time.monotonic() - started)))
            return response
        finally:
            self.in_flight -= 1

    async def _handle(self, request: Request) -> Response:
        match = _PATH.match(request.path)
        if request.method not in ("GET", "HEAD") or match is None:
            return _error(
                404,
                7003,
                f"Could not route to {request.path}, perhaps your object identifier is invalid?",
            )
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(403, 10000, "Authentication error")
        remaining, refused = self._ratelimit()
        if refused is not None:
            return refused
        fault = self._take_fault()
        if fault is not None and fault not in {"repeat_cursor", "invalid_records"}:
            response = await self._faulty(fault)
        else:
            response = self._route(request, match["account"], match["id"], fault)
        response.headers.append(("Ratelimit", f'"default";r={remaining};t=300'))
        return response

    async def _faulty(self, fault: Fault) -> Response:
        if fault == "server_error":
            return _error(500, 10001, "Internal server error")
        if fault == "bad_gateway_html":
            html = b"<html><body><h1>502 Bad Gateway</h1>cloudflare</body></html>"
            return Response(502, (html,), "text/html")
        if fault == "truncated_json":
            return Response(
                200, (b'{"success": true, "result": [{"id": "abc", "las',), "application/json"
            )
        if fault == "success_false":
            body = {"success": False, "errors": [{"code": 1000, "message": "Simulated failure"}]}
            return Response(200, (json.dumps(body).encode(),), "application/json")
        if fault == "wrong_result_type":
            return Response(
                200, (_envelope({"id": "not-a-list"}, {"cursor": ""}),), "application/json"
            )
        if fault == "huge_body":
            padding = b" " * (1 << 20)
            return Response(
                200,
                (b'{"success": true, "result": [', *([padding] * 20), b"]}"),
                "application/json",
            )
        if fault == "hang":
            await asyncio.sleep(3600)
        return _error(
            429,
            971,
            "Please wait and consider throttling your request speed",
            **{"Retry-After": str(self.retry_after)},
        )

    def _encode(self, record: dict[str, Any], include_policy: bool) -> bytes:
        rid = record["id"]
        if rid in self.online:
            record = dict(record, last_seen_at=datetime.now().astimezone().isoformat())
        elif include_policy and rid in self._encoded:
            return self._encoded[rid]
        if not include_policy:
            record = {k: v for k, v in record.items() if k != "policy"}
            return json.dumps(record).encode()
        encoded = json.dumps(record).encode()
        if rid not in self.online:
            self._encoded[rid] = encoded
        return encoded

    def _route(
        self, request: Request, account_id: str, registration_id: str | None, fault: Fault | None
    ) -> Response:
        fleet = self._accounts.get(account_id)
        if fleet is None:
            return _error(
                404,
                7003,
                "Could not route to /accounts/..., perhaps your object identifier is invalid?",
            )
        include_policy = "policy" in ",".join(request.query_values("include")).split(",")
        if registration_id is not None:
            record = fleet.get(registration_id)
            if record is None:
                return _error(404, 1001, "Registration not found")
            body = (
                b'{"success":true,"errors":[],"messages":[],"result":'
                + self._encode(record, include_policy)
                + b"}"
            )
            return Response(200, (body,), "application/json")
        return self._list(request, fleet, include_policy, fault)

    def _list(
        self,
        request: Request,
        fleet: dict[str, dict[str, Any]],
        include_policy: bool,
        fault: Fault | None,
    ) -> Response:
        ids = request.query_values("id")
        status = (request.query_values("status") or ["active"])[0]
        if ids:
            candidates = [fleet[i] for i in dict.fromkeys(ids) if i in fleet]
        else:
            candidates = [fleet[k] for k in sorted(fleet)]
        if status == "active":
            candidates = [r for r in candidates if not r.get("revoked_at")]
        elif status == "revoked":
            candidates = [r for r in candidates if r.get("revoked_at")]
        seen_after = _ts(next(iter(request.query_values("seen_after")), None))
        seen_before = _ts(next(iter(request.query_values("seen_before")), None))
        if seen_after is not None or seen_before is not None:
            now_iso = datetime.now().astimezone().isoformat()

            def seen(r: dict[str, Any]) -> float:
                return _ts(now_iso if r["id"] in self.online else r["last_seen_at"]) or 0.0

            candidates = [
                r
                for r in candidates
                if (seen_after is None or seen(r) >= seen_after)
                and (seen_before is None or seen(r) < seen_before)
            ]
        per_page_text = (request.query_values("per_page") or [str(DEFAULT_PER_PAGE)])[0]
        per_page = max(
            1,
            min(
                int(per_page_text) if per_page_text.isdigit() else DEFAULT_PER_PAGE,
                self.max_per_page,
            ),
        )
        cursor = (request.query_values("cursor") or [""])[0]
        offset = (
            int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":")[0]) if cursor else 0
        )
        page = candidates[offset : offset + per_page]
        end = offset + len(page)
        next_cursor = (
            base64.urlsafe_b64encode(f"{end}:sim".encode()).decode()
            if end < len(candidates)
            else ""
        )
        if fault == "repeat_cursor":
            next_cursor = cursor or base64.urlsafe_b64encode(b"0:sim").decode()
        encoded = [self._encode(r, include_policy) for r in page]
        if fault == "invalid_records":
            encoded += [json.dumps(r).encode() for r in INVALID_RECORDS]
        info = {
            "count": len(page),
            "cursor": next_cursor,
            "per_page": per_page,
            "total_count": len(candidates),
        }
        body = (
            b'{"success":true,"errors":[],"messages":[],"result":['
            + b",".join(encoded)
            + b'],"result_info":'
            + json.dumps(info).encode()
            + b"}"
        )
        return Response(200, (body,), "application/json")
