"""Command line: flags, logging, and the modes (serve, --once, --check-config, --demo)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from exporter import __version__, logs
from exporter.app import Exporter
from exporter.config import ConfigError, Settings, load_settings, summary
from exporter.demo import start_demo
from exporter.httpserver import HttpServer
from exporter.server import Routes
from exporter.webconfig import WebSettings, load_web_config

log = logging.getLogger("exporter")

DEFAULT_LISTEN = "0.0.0.0:9787"
ONCE_TIMEOUT_SECONDS = 300.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cloudflare-warp-exporter",
        description="Prometheus exporter for Cloudflare Zero Trust WARP device registrations.",
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        default="config.yaml",
        metavar="PATH",
        help="configuration file (default: %(default)s)",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="address to serve on (default: %(default)s)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config",
        default=None,
        metavar="PATH",
        help="TLS and basic auth config, in the Prometheus exporter-toolkit format",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        choices=logs.LEVELS,
        default="info",
        help="least severe level logged (default: %(default)s)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        choices=("logfmt", "json"),
        default="logfmt",
        help="log line format (default: %(default)s)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print a summary or the errors, exit",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="refresh once, print the exposition, exit 1 if any account failed",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="serve a simulated fleet from an embedded API; no token needed",
    )
    parser.add_argument(
        "--version", action="version", version=f"cloudflare-warp-exporter {__version__}"
    )
    return parser.parse_args(argv)


def parse_listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--web.listen-address: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def warn_if_token_file_open(settings: Settings) -> None:
    token_file = settings.config.api.token_file
    if token_file is None:
        return
    path = token_file if token_file.is_absolute() else Path(settings.source).parent / token_file
    with contextlib.suppress(OSError):
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("token file %s is readable by group or others; chmod 600 it", path)


async def run_once(exporter: Exporter) -> int:
    try:
        chunks = await exporter.scrape(ONCE_TIMEOUT_SECONDS)
        sys.stdout.buffer.writelines(chunks)
    finally:
        await exporter.close()
    sys.stdout.flush()
    return 1 if exporter.collection.any_failed() else 0


async def serve(exporter: Exporter, listen: str, web: WebSettings | None) -> int:
    host, port = parse_listen_address(listen)
    tls = web.tls if web is not None else None
    server = HttpServer(
        Routes(exporter, ready=lambda: True, auth=web.auth if web is not None else None),
        ssl_context=tls.context if tls is not None else None,
        extra_headers=web.headers if web is not None else (),
        server_name=f"cloudflare-warp-exporter/{__version__}",
    )
    bound = await server.start(host, port)
    scheme = "https" if tls is not None else "http"
    log.info("listening on %s://%s:%d/metrics", scheme, *bound)
    watcher = asyncio.create_task(tls.watch()) if tls is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        task = asyncio.create_task(exporter.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    started = time.monotonic()
    # Cancel the refresh first: scrapes waiting on it then answer with the data there is
    # instead of being cut off when the grace period ends.
    if watcher is not None:
        watcher.cancel()
    await exporter.collection.stop()
    await server.close(grace=2.0)
    await exporter.close()
    log.info("stopped in %.1fs", time.monotonic() - started)
    return 0


async def run(args: argparse.Namespace) -> int:
    simulator = None
    if args.demo:
        simulator, settings = await start_demo()
        exporter = Exporter(settings, loader=lambda: settings)
        log.info("demo mode: simulated Cloudflare API at %s", simulator.base_url)
    else:
        settings = load_settings(args.config_file)
        warn_if_token_file_open(settings)
        if settings.token is None:
            log.warning("no API token: set CLOUDFLARE_API_TOKEN or api.token_file")
        exporter = Exporter(settings)
    try:
        if args.once:
            return await run_once(exporter)
        web = load_web_config(args.web_config) if args.web_config else None
        return await serve(exporter, args.listen, web)
    finally:
        if simulator is not None:
            await simulator.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    if args.check_config:
        try:
            print(summary(load_settings(args.config_file)))
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        return 0
    try:
        parse_listen_address(args.listen)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"cannot serve on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
