"""Issue 5: TLS, mTLS, basic auth, headers, hostile clients and hostile label values."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import trustme
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import ConfigError
from exporter.simulator import SimulatedCloudflare
from exporter.webconfig import load_web_config
from tests.conftest import ACCOUNT, ROOT, TOKEN, require_tool

PASSWORD = "correct horse battery staple"


def exporter_env(sim: SimulatedCloudflare) -> dict[str, str]:
    return {"CLOUDFLARE_API_TOKEN": TOKEN, "CLOUDFLARE_BASE_URL": sim.base_url}


def config() -> dict[str, Any]:
    return {"accounts": [{"account_id": ACCOUNT, "discover": True}]}


def write_web(tmp_path: Path, web: dict[str, Any]) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(web))
    return path


def tls_web(tmp_path: Path, ca: trustme.CA) -> Path:
    """A web config serving HTTPS with a fresh certificate from ``ca``."""
    server_files(tmp_path, ca)
    tls = {"cert_file": "tls/server.crt", "key_file": "tls/server.key"}
    return write_web(tmp_path, {"tls_server_config": tls})


def start_https(
    exporter_process: Any, web: Path, sim: SimulatedCloudflare, context: ssl.SSLContext
) -> Any:
    """The exporter behind ``web``, waited for over HTTPS trusting ``context``."""
    return exporter_process(
        config(), f"--web.config.file={web}", env=exporter_env(sim), scheme="https", verify=context
    )


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def server_files(tmp_path: Path, ca: trustme.CA, name: str = "server") -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    (tmp_path / "tls").mkdir(exist_ok=True)
    cert.private_key_pem.write_to_path(str(tmp_path / "tls" / f"{name}.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls" / f"{name}.crt"))


def client_context(ca: trustme.CA, client: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if client is not None:
        client.configure_cert(context)
    return context


def test_tls_serves_https_only(
    tmp_path: Path, ca: trustme.CA, simulator: SimulatedCloudflare, exporter_process
) -> None:
    web = tls_web(tmp_path, ca)
    context = client_context(ca)
    exporter = start_https(exporter_process, web, simulator, context)
    response = httpx.get(exporter.url + "/metrics", verify=context)
    assert response.status_code == 200 and "cloudflare_warp_up" in response.text
    with pytest.raises(httpx.TransportError):
        httpx.get(exporter.url.replace("https://", "http://") + "/metrics", timeout=5)
    assert exporter.get("/-/healthy", verify=context).status_code == 200


def test_mtls_accepts_known_clients_and_refuses_others(
    tmp_path: Path, ca: trustme.CA, simulator: SimulatedCloudflare, exporter_process
) -> None:
    server_files(tmp_path, ca)
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(tmp_path / "tls" / "clients-ca.crt"))
    web = write_web(
        tmp_path,
        {
            "tls_server_config": {
                "cert_file": "tls/server.crt",
                "key_file": "tls/server.key",
                "client_ca_file": "tls/clients-ca.crt",
                "client_auth_type": "RequireAndVerifyClientCert",
                "min_version": "TLS12",
            }
        },
    )
    good = client_context(ca, client_ca.issue_cert("prometheus@example.com"))
    exporter = start_https(exporter_process, web, simulator, good)
    assert httpx.get(exporter.url + "/metrics", verify=good).status_code == 200
    stranger = client_context(ca, trustme.CA().issue_cert("mallory@example.com"))
    for context in (client_context(ca), stranger):
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            httpx.get(exporter.url + "/metrics", verify=context, timeout=5).raise_for_status()


def test_certificate_changed_on_disk_is_picked_up(
    tmp_path: Path, ca: trustme.CA, simulator: SimulatedCloudflare, exporter_process
) -> None:
    web = tls_web(tmp_path, ca)
    exporter = start_https(exporter_process, web, simulator, client_context(ca))
    port = int(exporter.url.rsplit(":", 1)[1])

    def served_serial(trust: trustme.CA) -> str:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_context(trust).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return hashlib.sha256(der).hexdigest()

    before = served_serial(ca)
    new_ca = trustme.CA()
    server_files(tmp_path, new_ca)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            after = served_serial(new_ca)
            break
        except ssl.SSLError:
            time.sleep(0.2)
    else:
        pytest.fail("the new certificate was not served within 10 s")
    assert after != before
    assert "TLS certificate files changed" in exporter.log()


def basic_web(tmp_path: Path) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    return write_web(
        tmp_path,
        {
            "basic_auth_users": {"prometheus": hashed},
            "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
        },
    )


def test_basic_auth(tmp_path: Path, simulator: SimulatedCloudflare, exporter_process) -> None:
    exporter = exporter_process(
        config(), f"--web.config.file={basic_web(tmp_path)}", env=exporter_env(simulator)
    )
    url = exporter.url
    missing = httpx.get(url + "/metrics")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Basic")
    assert "cloudflare_warp" not in missing.text
    assert httpx.get(url + "/metrics", auth=("prometheus", "wrong")).status_code == 401
    assert httpx.get(url + "/metrics", auth=("nobody", PASSWORD)).status_code == 401
    assert httpx.get(url + "/metrics", auth=("prometheus", "x" * 100)).status_code == 401
    assert (
        httpx.get(url + "/metrics", headers={"Authorization": "Basic !!!notbase64"}).status_code
        == 401
    )
    assert httpx.get(url + "/", auth=("prometheus", "wrong")).status_code == 401
    assert httpx.post(url + "/-/reload").status_code == 401
    ok = httpx.get(url + "/metrics", auth=("prometheus", PASSWORD))
    assert ok.status_code == 200 and "cloudflare_warp_up" in ok.text
    assert ok.headers["x-frame-options"] == "deny"
    healthy = httpx.get(url + "/-/healthy")
    assert healthy.status_code == 200 and healthy.headers["x-frame-options"] == "deny"


def test_unknown_user_costs_as_much_as_a_known_one() -> None:
    from exporter.webconfig import BasicAuth

    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    auth = BasicAuth({"prometheus": hashed})

    def timed(user: str) -> float:
        import base64

        header = "Basic " + base64.b64encode(f"{user}:wrong".encode()).decode()
        start = time.perf_counter()
        assert asyncio.run(auth.check(header)) is False
        return time.perf_counter() - start

    known = min(timed("prometheus") for _ in range(3))
    unknown = min(timed("nobody") for _ in range(3))
    # Same bcrypt cost either way: neither is a fast path (a cost-10 check takes > 20 ms).
    assert known > 0.02 and unknown > 0.02
    assert 0.5 < unknown / known < 2.0


@pytest.mark.parametrize(
    ("web", "message"),
    [
        (
            {"basic_auth_users": {"a": "plaintext"}},
            "basic_auth_users: user 'a': not a bcrypt hash ($2a$, $2b$ or $2y$)",
        ),
        (
            {
                "tls_server_config": {
                    "cert_file": "c",
                    "key_file": "k",
                    "client_auth_type": "RequireAnyClientCert",
                }
            },
            "tls_server_config.client_auth_type: RequireAnyClientCert cannot be honoured",
        ),
        (
            {"tls_server_config": {"cert_file": "c", "key_file": "k", "min_version": "SSL3"}},
            "tls_server_config.min_version: Input should be 'TLS10', 'TLS11', 'TLS12' or 'TLS13'",
        ),
        ({"http_server_config": {"http2": True}}, "http_server_config.http2: unknown key"),
        ({"basic_auth": {}}, "basic_auth: unknown key"),
        (
            {"tls_server_config": {"cert_file": "missing.crt", "key_file": "missing.key"}},
            "tls_server_config: cannot load certificates",
        ),
    ],
)
def test_web_config_is_strict(tmp_path: Path, web: dict[str, Any], message: str) -> None:
    path = write_web(tmp_path, web)
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_bad_web_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write_web(tmp_path, {"basic_auth_users": {"a": "plaintext"}})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--demo",
            f"--web.config.file={path}",
            "--web.listen-address=127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        f"{path}: basic_auth_users: user 'a': not a bcrypt hash ($2a$, $2b$ or $2y$)"
    )
    assert "Traceback" not in result.stderr


def test_example_web_config_passes_promtool_and_our_loader(tmp_path: Path, ca: trustme.CA) -> None:
    promtool = require_tool("promtool")
    example = ROOT / "web-config.example.yml"
    check = subprocess.run(
        [promtool, "check", "web-config", str(example)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert load_web_config(example).auth.enabled
    # The commented TLS block works too once uncommented, with its files in place.
    lines, in_tls = [], False
    for line in example.read_text().splitlines():
        in_tls = line == "# tls_server_config:" or (in_tls and line != "")
        lines.append(line[2:] if in_tls and not line.startswith("#   #") else line)
    uncommented = "\n".join(lines)
    tls = yaml.safe_load(uncommented)["tls_server_config"]
    assert tls["client_auth_type"] == "RequireAndVerifyClientCert"
    copy = tmp_path / "web.yml"
    copy.write_text(uncommented)
    server_files(tmp_path, ca)
    ca.cert_pem.write_to_path(str(tmp_path / "tls" / "clients-ca.crt"))
    check = subprocess.run(
        [promtool, "check", "web-config", str(copy)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert load_web_config(copy).tls is not None


def test_slow_and_silent_clients_do_not_block_scrapes(
    simulator: SimulatedCloudflare, exporter_process
) -> None:
    exporter = exporter_process(config(), env=exporter_env(simulator))
    host, port = "127.0.0.1", int(exporter.url.rsplit(":", 1)[1])
    idle = [socket.create_connection((host, port)) for _ in range(100)]
    dribbling = [socket.create_connection((host, port)) for _ in range(20)]
    for sock in dribbling:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
    try:
        response = httpx.get(exporter.url + "/metrics", timeout=10)
        assert response.status_code == 200 and "cloudflare_warp_up" in response.text
    finally:
        for sock in idle + dribbling:
            sock.close()


def test_200_concurrent_scrapes_are_all_answered(
    simulator: SimulatedCloudflare, exporter_process
) -> None:
    exporter = exporter_process(config(), env=exporter_env(simulator))

    async def scrape_all() -> list[int]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            responses = await asyncio.gather(
                *(client.get(exporter.url + "/metrics") for _ in range(200))
            )
        return [r.status_code for r in responses if "cloudflare_warp_up{" in r.text]

    assert asyncio.run(scrape_all()) == [200] * 200


def test_hostile_label_values_round_trip(fleet: list[dict[str, Any]], exporter_process) -> None:
    nasty = 'Bob\'s "MacBook" \\ C:\\temp\n<script>alert(1)</script> Zoë ☃ {a="b"}'
    fleet[0]["device"]["name"] = nasty
    fleet[1]["policy"]["name"] = "\\\\\\"
    sim = SimulatedCloudflare({ACCOUNT: fleet}, token=TOKEN)
    sim.start_in_thread()
    try:
        exporter = exporter_process(config(), env=exporter_env(sim))
        text = exporter.get("/metrics").text
    finally:
        sim.stop_thread()
    infos = {
        s.labels["registration_id"]: s.labels
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "cloudflare_warp_registration_info"
    }
    assert infos[fleet[0]["id"]]["device_name"] == nasty
    assert infos[fleet[1]["id"]]["policy_name"] == "\\\\\\"
    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert (check.returncode, check.stdout, check.stderr) == (0, b"", b"")


def test_landing_page_escapes_what_it_prints(
    tmp_path: Path, simulator: SimulatedCloudflare
) -> None:
    from tests.conftest import start_exporter, write_config

    folder = tmp_path / "<b>x&y<i>"
    folder.mkdir()
    path = write_config(folder, config())
    exporter = start_exporter(tmp_path, [f"--config.file={path}"], exporter_env(simulator))
    try:
        page = exporter.get("/").text
    finally:
        exporter.stop()
    assert "<b>x&y<i>" not in page
    assert "&lt;b&gt;x&amp;y&lt;i&gt;" in page


def test_token_file_readable_by_others_is_warned_about(
    tmp_path: Path, simulator: SimulatedCloudflare, exporter_process
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    cfg = config()
    cfg["api"] = {"token_file": str(token_file), "base_url": simulator.base_url}
    exporter = exporter_process(cfg)
    assert exporter.get("/metrics").status_code == 200
    assert "is readable by group or others; chmod 600 it" in exporter.log()
    assert TOKEN not in exporter.log()
