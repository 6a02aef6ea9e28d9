"""Shared fixtures: the simulated Cloudflare API on loopback, the exporter as a real process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.fleet import generate_fleet
from exporter.simulator import SimulatedCloudflare

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "01a7362d577a6c3019a474fd6f485823"
OTHER_ACCOUNT = "99a7362d577a6c3019a474fd6f485899"
TOKEN = "test-token-Sn3lZJTBX6kkg7OdcBUAxOO963GEIyGQ"
NOW = time.time()


def require_tool(name: str) -> str:
    """The tool's path; a missing tool fails the test under CI=true and skips it elsewhere.

    Tools installed into the virtualenv running pytest (hadolint, check-jsonschema) count too,
    though ``make test`` does not put the virtualenv on PATH.
    """
    path = shutil.which(name)
    if path is None:
        candidate = Path(sys.executable).parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            path = str(candidate)
    if path is None:
        message = f"{name} is not installed (CI installs it: see .ci/run)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fleet() -> list[dict[str, Any]]:
    return generate_fleet(60, now=NOW, seed=7)


@pytest.fixture
def simulator(fleet: list[dict[str, Any]]) -> Iterator[SimulatedCloudflare]:
    """A simulated API in its own thread: ``ACCOUNT`` holds ``fleet``."""
    sim = SimulatedCloudflare({ACCOUNT: fleet}, token=TOKEN, max_per_page=25)
    sim.start_in_thread()
    yield sim
    sim.stop_thread()


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class ExporterProcess:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_exporter(
    tmp_path: Path,
    args: list[str],
    env: dict[str, str] | None = None,
    scheme: str = "http",
    verify: Any = True,
) -> ExporterProcess:
    """Run ``python -m exporter`` on a free port; ``scheme``/``verify`` for TLS set-ups."""
    port = free_port()
    log_path = tmp_path / f"exporter-{port}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDFLARE_")}
    environ.update(env or {})
    command = [sys.executable, "-m", "exporter", f"--web.listen-address=127.0.0.1:{port}", *args]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=environ)
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exporter exited: {log_path.read_text()}")
        try:
            if httpx.get(url + "/-/healthy", timeout=1, verify=verify).status_code == 200:
                return ExporterProcess(process, url, log_path)
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError(f"exporter did not start: {log_path.read_text()}")


@pytest.fixture
def exporter_process(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    """Start the exporter (``python -m exporter``) with a config dict; stopped afterwards."""
    started: list[ExporterProcess] = []

    def start(
        config: dict[str, Any] | None,
        *extra: str,
        env: dict[str, str] | None = None,
        scheme: str = "http",
        verify: Any = True,
    ) -> ExporterProcess:
        args = list(extra)
        if config is not None:
            args.insert(0, f"--config.file={write_config(tmp_path, config)}")
        proc = start_exporter(tmp_path, args, env, scheme, verify)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
