"""Run the benchmark: ``python -m bench [--sizes 1000,10000,100000] [--latency 0.05] [--runs 3]``.

The simulated API runs in this process (a thread, with the set latency per request); the exporter
runs as its own process, as in production. Prints a table per fleet size plus the ratios against
the naive one-GET-per-registration client and against prometheus_client.generate_latest.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.render import compare
from exporter.fleet import generate_fleet
from exporter.simulator import SimulatedCloudflare

ACCOUNT = "0d3a0e1f5c6b4a2d9e8f7a6b5c4d3e2f"
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Exporter:
    def __init__(self, config: dict[str, Any], base_url: str) -> None:
        self.dir = tempfile.TemporaryDirectory()
        path = Path(self.dir.name) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, CLOUDFLARE_API_TOKEN=TOKEN, CLOUDFLARE_BASE_URL=base_url)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={path}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warning",
            ],
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/-/healthy", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("exporter did not start")

    def scrape(self, encoding: str = "identity") -> tuple[float, bytes]:
        """One scrape as Prometheus makes it; http.client reads bodies at C speed (httpx's
        pure-Python reading of a 100 MB body would dominate what we mean to measure)."""
        host, port = self.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=180)
        start = time.perf_counter()
        connection.request(
            "GET",
            "/metrics",
            headers={"Accept-Encoding": encoding, "X-Prometheus-Scrape-Timeout-Seconds": "120"},
        )
        body = connection.getresponse().read()
        seconds = time.perf_counter() - start
        connection.close()
        return seconds, body

    def api_requests(self) -> int:
        _, body = self.scrape()
        total = 0
        for line in body.decode().splitlines():
            if line.startswith("cloudflare_warp_api_requests_total{"):
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()


def config_for(
    ids: list[str] | None, per_registration: bool, full_refresh: float = 900, concurrency: int = 4
) -> dict[str, Any]:
    account: dict[str, Any] = {"account_id": ACCOUNT}
    if ids is None:
        account["discover"] = True
    else:
        account["registrations"] = ids
    return {
        "api": {
            "max_requests_per_5m": 1200,
            "timeout_seconds": 60,
            "max_concurrency": concurrency,
        },
        "accounts": [account],
        "collection": {"min_interval_seconds": 3600, "full_refresh_seconds": full_refresh},
        "metrics": {"per_registration": per_registration},
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure(
    sim: SimulatedCloudflare, config: dict[str, Any], runs: int, warm_runs: int = 5
) -> dict[str, Any]:
    cold, requests, rss = [], [], []
    warm: list[float] = []
    plain = gz = b""
    for run in range(runs):
        exporter = Exporter(config, sim.base_url)
        try:
            seconds, plain = exporter.scrape()
            cold.append(seconds)
            if run == 0:
                warm = [exporter.scrape()[0] for _ in range(warm_runs)]
                gz = exporter.scrape("gzip")[1]
            requests.append(exporter.api_requests())
            rss.append(exporter.peak_rss_mb())
        finally:
            exporter.stop()
    return {
        "requests": max(requests),
        "cold": median(cold),
        "warm": median(warm),
        "rss": max(rss),
        "bytes": len(plain),
        "gzip": len(gz),
        "gunzip_ok": gzip.decompress(gz).count(b"\n") == plain.count(b"\n") if gz else False,
    }


def incremental_savings(sim: SimulatedCloudflare) -> tuple[int, int]:
    """API requests (as the simulator saw them) of a full discovery refresh and of the
    incremental one that follows it."""
    config = config_for(None, True, full_refresh=3600)
    config["collection"]["min_interval_seconds"] = 0
    exporter = Exporter(config, sim.base_url)
    try:
        before = len(sim.requests)
        exporter.scrape()
        full = len(sim.requests) - before
        exporter.scrape()
        return full, len(sim.requests) - before - full
    finally:
        exporter.stop()


def naive_seconds(sim: SimulatedCloudflare, ids: list[str], sample: int) -> tuple[float, int]:
    """One GET per registration, in sequence (the API reference's example), on a sample."""
    start = time.perf_counter()
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for rid in ids[:sample]:
            client.get(
                f"{sim.base_url}/accounts/{ACCOUNT}/devices/registrations/{rid}"
            ).raise_for_status()
    return (time.perf_counter() - start) * len(ids) / sample, len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}; API latency {args.latency * 1000:.0f} ms; medians of {args.runs} runs\n"
    )
    for n in sizes:
        now = time.time()
        records = generate_fleet(n, now=now, seed=n)
        ids = [r["id"] for r in records]
        online = ids[::20]  # 5 % of devices check in all the time: what seen_after picks up
        sim = SimulatedCloudflare(
            {ACCOUNT: records}, token=TOKEN, latency=args.latency, online=online, limit_per_5m=10**9
        )
        sim.start_in_thread()
        try:
            rows = []
            modes: list[tuple[str, list[str] | None, bool, int]] = [
                ("discover", None, True, 4),
                ("discover, per_registration: false", None, False, 4),
            ]
            if n <= 10_000:
                modes.insert(0, ("configured ids", ids, True, 4))
            if n == 10_000:
                modes.insert(1, ("configured ids, api.max_concurrency: 8", ids, True, 8))
            for label, mode_ids, per_reg, concurrency in modes:
                runs = args.runs if n < 100_000 else max(1, args.runs - 1)
                config = config_for(mode_ids, per_reg, concurrency=concurrency)
                rows.append((label, measure(sim, config, runs)))
            print(f"## N = {n:,}\n")
            print(
                "| mode | API requests/refresh | cold scrape | warm scrape | peak RSS | bytes | gzip bytes |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|")
            for label, r in rows:
                print(
                    f"| {label} | {r['requests']} | {r['cold']:.3f} s | {r['warm']:.4f} s | "
                    f"{r['rss']:.0f} MB | {r['bytes']:,} | {r['gzip']:,} |"
                )
            if n <= 10_000:
                rounds = -(-n // 100) // 4 + (1 if -(-n // 100) % 4 else 0)
                print(
                    f"\nFloor for configured ids: {-(-n // 100)} requests, 4 in flight, "
                    f"{rounds} rounds x {args.latency * 1000:.0f} ms = {rounds * args.latency:.2f} s; "
                    f"for discovery: {-(-n // 1000)} pages in sequence = "
                    f"{-(-n // 1000) * args.latency:.2f} s."
                )
            full, incremental = incremental_savings(sim)
            print(
                f"\nIncremental refresh (seen_after, {len(online):,} devices active): "
                f"{incremental} request(s) instead of {full} for a full listing."
            )
            render_runs = 5 if n < 100_000 else 3
            r = compare(records, render_runs)
            print(
                f"Render alone: ours {r['ours'] * 1000:.1f} ms, prometheus_client.generate_latest "
                f"{r['generate_latest'] * 1000:.1f} ms: **{r['ratio']:.1f}x** faster."
            )
            if n == 1000:
                naive, count = naive_seconds(sim, ids, 100)
                ours = rows[0][1]
                print(
                    f"Naive client (one GET per registration in sequence, 100 timed, scaled to {count:,}): "
                    f"{naive:.1f} s and {count:,} requests per refresh, against ours {ours['cold']:.3f} s and "
                    f"{ours['requests']} requests: **{naive / ours['cold']:.0f}x** faster, "
                    f"**{count / ours['requests']:.0f}x** fewer requests."
                )
            print()
        finally:
            sim.stop_thread()


if __name__ == "__main__":
    main()
