"""The API token never reaches the exporter's output, even at --log.level debug (issue 3).

The exporter runs as a real process against the simulated API through success, an
authentication failure (403), server errors (retried) and a hung API (timeout), and a reload;
then its whole log and every page it served are searched for the token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.simulator import SimulatedCloudflare
from tests.conftest import ACCOUNT, TOKEN


@pytest.mark.parametrize("source", ["env", "token_file"])
@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_token_never_appears_in_output(
    simulator: SimulatedCloudflare,
    exporter_process: Any,
    tmp_path: Path,
    log_format: str,
    source: str,
) -> None:
    config: dict[str, Any] = {
        "api": {"timeout_seconds": 1, "max_retries": 1},
        "collection": {"min_interval_seconds": 0},
        "accounts": [{"account_id": ACCOUNT, "discover": True}],
    }
    env = {"CLOUDFLARE_BASE_URL": simulator.base_url}
    if source == "env":
        env["CLOUDFLARE_API_TOKEN"] = TOKEN
    else:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        config["api"]["token_file"] = str(token_file)
    exporter = exporter_process(config, "--log.level=debug", f"--log.format={log_format}", env=env)
    served: list[str] = []

    def scrape() -> str:
        response = exporter.get("/metrics")
        assert response.status_code == 200
        served.append(response.text)
        return response.text

    assert 'cloudflare_warp_up{account_id="' + ACCOUNT + '"} 1' in scrape()
    simulator.set_fault("server_error")
    assert 'cloudflare_warp_up{account_id="' + ACCOUNT + '"} 0' in scrape()
    simulator.set_fault("hang")
    scrape()
    simulator.set_fault(None)
    simulator.token = "a-different-token"  # the API now refuses ours: 403
    assert 'code="403"' in scrape()
    assert httpx.post(exporter.url + "/-/reload", timeout=10).status_code == 200
    served.append(exporter.get("/").text)
    assert exporter.stop() == 0

    log = exporter.log()
    lines = log.splitlines()
    messages = [json.loads(line)["msg"] for line in lines] if log_format == "json" else lines
    # The scenarios really happened, and were logged at debug level.
    assert any("refreshed:" in m for m in messages)
    assert any("retrying" in m for m in messages)
    assert any("refresh failed: HTTP 500" in m for m in messages)
    assert any("refresh failed: timeout" in m for m in messages)
    assert any("refresh failed: HTTP 403, Cloudflare error 10000" in m for m in messages)
    assert any("configuration reloaded" in m for m in messages)

    for text in (log, *served):
        assert TOKEN not in text
        assert TOKEN[-12:] not in text  # not even a tail of it
    assert "Bearer" not in log
