"""A small asyncio HTTP/1.1 server: just what an exporter (and the API simulator) needs.

Bounded everywhere a hostile client could push: the request head must arrive within
``head_timeout`` seconds and fit in ``max_head_bytes``, bodies are capped, and every connection
is its own task, so a client that connects and sends nothing (slowloris) delays nobody else.
Keep-alive is supported; chunked request bodies are not (no client of ours sends them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ``, ``."""
    body: bytes
    peer_certificate: dict[str, object] | None = None

    def query_values(self, name: str) -> list[str]:
        return [value for key, value in self.query if key == name]


@dataclass
class Response:
    status: int = 200
    body: Iterable[bytes] = (b"",)
    """The body as chunks, written one after another without joining them. A list or tuple is
    sent with Content-Length; any other iterable is consumed lazily, sent chunked."""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        """A short plain-text answer."""
        return cls(status, (text.encode(),))


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        head_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        max_head_bytes: int = 16 * 1024,
        max_headers: int = 100,
        max_body_bytes: int = 64 * 1024,
        extra_headers: Sequence[tuple[str, str]] = (),
        server_name: str = "",
    ) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._head_timeout = head_timeout
        self._idle_timeout = idle_timeout
        self._max_head = max_head_bytes
        self._max_headers = max_headers
        self._max_body = max_body_bytes
        self.extra_headers = list(extra_headers)
        self._server_name = server_name
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()
        """Connections inside a request; the others are idle keep-alives, closed at once."""

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; return the bound address (port 0 picks a free port)."""
        self._server = await asyncio.start_server(
            self._serve,
            host or None,
            port,
            ssl=self._ssl,
            limit=self._max_head,
            ssl_handshake_timeout=self._head_timeout if self._ssl else None,
            reuse_address=True,
        )
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def close(self, grace: float = 2.0) -> None:
        """Stop accepting; let requests in progress finish for ``grace`` seconds, then cancel."""
        if self._server is not None:
            self._server.close()
        for task in self._connections - self._busy:
            task.cancel()
        if self._connections:
            _, pending = await asyncio.wait(self._connections, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_cert = None
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            peer_cert = ssl_object.getpeercert() or None
        while True:
            async with asyncio.timeout(self._idle_timeout):
                first = await reader.read(1)
            if not first:
                return
            task = asyncio.current_task()
            assert task is not None
            self._busy.add(task)
            try:
                keep_alive = await self._exchange(first, reader, writer, peer_cert)
            finally:
                self._busy.discard(task)
            if not keep_alive:
                return

    async def _exchange(
        self,
        first: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer_cert: dict[str, object] | None,
    ) -> bool:
        """Read one request, answer it; return whether the connection stays open."""
        try:
            async with asyncio.timeout(self._head_timeout):
                request, keep_alive = await self._read_request(first, reader, peer_cert)
        except _BadRequest as exc:
            await self._write(writer, "GET", Response.text(exc.status, f"{exc}\n"), False)
            return False
        try:
            response = await self._handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.path)
            response = Response.text(500, "internal error\n")
        await self._write(writer, request.method, response, keep_alive)
        return keep_alive

    async def _read_request(
        self, first: bytes, reader: asyncio.StreamReader, peer_cert: dict[str, object] | None
    ) -> tuple[Request, bool]:
        try:
            head = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request head too large") from None
        if len(head) > self._max_head:
            raise _BadRequest(431, "request head too large")
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        if len(lines) - 1 > self._max_headers:
            raise _BadRequest(431, "too many headers")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, "malformed header line")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if "transfer-encoding" in headers:
            raise _BadRequest(501, "chunked request bodies are not supported")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise _BadRequest(400, "bad Content-Length")
        length = int(length_text)
        if length > self._max_body:
            raise _BadRequest(413, "request body too large")
        body = await reader.readexactly(length) if length else b""
        split = urlsplit(target)
        request = Request(
            method=method,
            path=unquote(split.path) or "/",
            query=parse_qsl(split.query, keep_blank_values=True),
            headers=headers,
            body=body,
            peer_certificate=peer_cert,
        )
        connection = headers.get("connection", "").lower()
        keep_alive = version == "HTTP/1.1" and "close" not in connection
        return request, keep_alive

    async def _write(
        self, writer: asyncio.StreamWriter, method: str, response: Response, keep_alive: bool
    ) -> None:
        body = response.body
        sized = isinstance(body, list | tuple)
        framing = (
            ("Content-Length", str(sum(len(chunk) for chunk in body)))
            if sized
            else ("Transfer-Encoding", "chunked")
        )
        reason = HTTPStatus(response.status).phrase
        headers = [
            ("Content-Type", response.content_type),
            framing,
            ("Connection", "keep-alive" if keep_alive else "close"),
            *([("Server", self._server_name)] if self._server_name else []),
            *self.extra_headers,
            *response.headers,
        ]
        head = f"HTTP/1.1 {response.status} {reason}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
        writer.write(head.encode("latin-1"))
        if method == "HEAD":
            await writer.drain()
            return
        for chunk in body:
            if not chunk:
                continue
            if sized:
                writer.write(chunk)
            else:
                writer.write(b"%x\r\n" % len(chunk))
                writer.write(chunk)
                writer.write(b"\r\n")
            await writer.drain()
        if not sized:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
