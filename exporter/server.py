"""The exporter's HTTP routes: /, /metrics, /-/healthy, /-/ready, /-/reload."""

from __future__ import annotations

import html
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator

from exporter import __version__
from exporter.app import SCRAPE_TIMEOUT_HEADER, Exporter
from exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE
from exporter.httpserver import Request, Response
from exporter.webconfig import BasicAuth

GZIP_LEVEL = 1
"""Exposition text is repetitive: level 1 already shrinks it about tenfold, at a fraction of
the CPU time of the default level."""

Route = Callable[[Request], Awaitable[Response]]


def gzip_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Compress as the chunks come, never holding the whole text."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    for chunk in chunks:
        if piece := compressor.compress(chunk):
            yield piece
    yield compressor.flush()


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


def wants_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


UNAUTHENTICATED = frozenset({"/-/healthy"})
"""Routes that answer without credentials when basic auth is on: liveness probes."""


class Routes:
    def __init__(
        self, exporter: Exporter, ready: Callable[[], bool], auth: BasicAuth | None = None
    ) -> None:
        self._exporter = exporter
        self._ready = ready
        self._auth = auth
        self._table: dict[str, tuple[tuple[str, ...], Route]] = {
            "/": (("GET", "HEAD"), self.landing),
            "/metrics": (("GET", "HEAD"), self.metrics),
            "/-/healthy": (("GET", "HEAD"), self.healthy),
            "/-/ready": (("GET", "HEAD"), self.ready),
            "/-/reload": (("POST", "PUT"), self.reload),
        }

    async def __call__(self, request: Request) -> Response:
        auth = self._auth
        if (
            auth is not None
            and auth.enabled
            and request.path not in UNAUTHENTICATED
            and not await auth.check(request.headers.get("authorization"))
        ):
            response = Response.text(401, "Unauthorized\n")
            response.headers.append(("WWW-Authenticate", 'Basic realm="cloudflare-warp-exporter"'))
            return response
        entry = self._table.get(request.path)
        if entry is None:
            return Response.text(404, "404 page not found\n")
        methods, route = entry
        if request.method not in methods:
            response = Response.text(405, "method not allowed\n")
            response.headers.append(("Allow", ", ".join(methods)))
            return response
        return await route(request)

    async def landing(self, request: Request) -> Response:
        exporter = self._exporter
        accounts = "".join(
            f"<li><code>{html.escape(a.account_id)}</code></li>"
            for a in exporter.settings.config.accounts
        )
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Cloudflare WARP exporter</title></head>
<body><h1>Cloudflare WARP exporter</h1>
<p>Version {html.escape(__version__)}.
Config: <code>{html.escape(exporter.settings.source)}</code></p>
<ul><li><a href="metrics">Metrics</a></li><li><a href="-/healthy">Health</a></li>
<li><a href="-/ready">Readiness</a></li></ul>
<h2>Accounts</h2><ul>{accounts}</ul>
</body></html>
"""
        return Response(200, (page.encode(),), "text/html; charset=utf-8")

    async def metrics(self, request: Request) -> Response:
        exporter = self._exporter
        timeout = exporter.scrape_timeout(request.headers.get(SCRAPE_TIMEOUT_HEADER))
        openmetrics = wants_openmetrics(request.headers.get("accept", ""))
        chunks = await exporter.scrape(timeout, openmetrics)
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        response = Response(200, chunks, content_type)
        response.headers.append(("Vary", "Accept, Accept-Encoding"))
        if wants_gzip(request.headers.get("accept-encoding", "")):
            response.body = gzip_chunks(chunks)
            response.headers.append(("Content-Encoding", "gzip"))
        return response

    async def healthy(self, request: Request) -> Response:
        return Response.text(200, "Healthy\n")

    async def ready(self, request: Request) -> Response:
        if self._ready():
            return Response.text(200, "Ready\n")
        return Response.text(503, "Not ready\n")

    async def reload(self, request: Request) -> Response:
        if await self._exporter.reload():
            return Response.text(200, "Reloaded\n")
        return Response.text(500, "Reload failed; the running configuration is kept (see log)\n")
