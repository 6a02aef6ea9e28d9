"""HTTP routes of a running exporter process, over real loopback sockets."""

from __future__ import annotations

import gzip
import socket

import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from exporter.simulator import SimulatedCloudflare
from tests.conftest import ACCOUNT, TOKEN


def start(simulator: SimulatedCloudflare, exporter_process):
    return exporter_process(
        {"accounts": [{"account_id": ACCOUNT, "discover": True}]},
        env={"CLOUDFLARE_API_TOKEN": TOKEN, "CLOUDFLARE_BASE_URL": simulator.base_url},
    )


def test_routes(simulator: SimulatedCloudflare, exporter_process) -> None:
    exporter = start(simulator, exporter_process)
    landing = exporter.get("/")
    assert landing.status_code == 200
    assert landing.headers["content-type"].startswith("text/html")
    assert '<a href="metrics">' in landing.text
    assert exporter.get("/-/healthy").status_code == 200
    assert exporter.get("/-/ready").status_code == 200
    missing = exporter.get("/nope")
    assert missing.status_code == 404
    wrong = httpx.post(exporter.url + "/metrics")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD"
    assert httpx.delete(exporter.url + "/").status_code == 405
    head = httpx.head(exporter.url + "/metrics")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_gzip_and_openmetrics_negotiation(simulator: SimulatedCloudflare, exporter_process) -> None:
    exporter = start(simulator, exporter_process)
    plain = httpx.get(exporter.url + "/metrics", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    raw = httpx.get(exporter.url + "/metrics", headers={"Accept-Encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip"
    # httpx decoded it already; decode the raw bytes ourselves too.
    with httpx.stream(
        "GET", exporter.url + "/metrics", headers={"Accept-Encoding": "gzip"}
    ) as response:
        compressed = b"".join(response.iter_raw())
    assert len(compressed) < len(plain.content) / 3
    body = gzip.decompress(compressed)
    assert body.count(b"\ncloudflare_warp_registration_info{") == plain.text.count(
        "\ncloudflare_warp_registration_info{"
    )
    om = httpx.get(
        exporter.url + "/metrics",
        headers={
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        },
    )
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    families = {f.name for f in parse_openmetrics(om.text)}
    assert {
        "cloudflare_warp_registration",
        "cloudflare_warp_up",
        "cloudflare_warp_api_requests",
    } <= families


def test_malformed_and_oversized_requests_get_4xx(
    simulator: SimulatedCloudflare, exporter_process
) -> None:
    exporter = start(simulator, exporter_process)
    host, port = exporter.url.removeprefix("http://").split(":")
    for payload, status in (
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
    ):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(payload)
            assert sock.recv(100).split(b" ")[1] == status
    assert exporter.get("/-/healthy").status_code == 200
