"""Config loading: every bad config names the file and the key, exits 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config, load_settings
from tests.conftest import ROOT

ACCOUNT = "01a7362d577a6c3019a474fd6f485823"
REG = "11ffb86f-3f0c-4306-b4a2-e62f872b166a"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_loads_with_every_documented_key() -> None:
    config = load_config(ROOT / "config.example.yaml")
    assert config.accounts[0].account_id == ACCOUNT
    assert config.api.max_requests_per_5m == 900
    text = (ROOT / "config.example.yaml").read_text()
    for section, model in (
        ("api", config.api),
        ("collection", config.collection),
        ("metrics", config.metrics),
        ("accounts", config.accounts[0]),
    ):
        for key in type(model).model_fields:
            assert f"{key}:" in text, f"config.example.yaml does not document {section}.{key}"


BAD_CONFIGS = [
    (
        f'accounts:\n  - account_id: "xyz"\n    registrations: ["{REG}"]\n',
        "accounts.0.account_id: must be 32 lowercase hexadecimal characters",
    ),
    (f'accounts:\n  - registrations: ["{REG}"]\n', "accounts.0.account_id: field required"),
    ("api:\n  timeout_seconds: 5\n", "accounts: field required"),
    (
        f'accounts:\n  - account_id: "{ACCOUNT}"\n    registrations: ["{REG}"]\n    colour: blue\n',
        "accounts.0.colour: unknown key",
    ),
    (
        f'accounts:\n  - account_id: "{ACCOUNT}"\n    discover: true\napi:\n  timeout_seconds: 0\n',
        "api.timeout_seconds: Input should be greater than 0",
    ),
    (
        f'accounts:\n  - account_id: "{ACCOUNT}"\n    discover: true\napi:\n  max_requests_per_5m: 5000\n',
        "api.max_requests_per_5m: Input should be less than or equal to 1200",
    ),
    (
        f'accounts:\n  - account_id: "{ACCOUNT}"\n',
        "accounts.0: no registrations listed and discover is false: nothing to watch",
    ),
    (
        f'accounts:\n  - account_id: "{ACCOUNT}"\n    registrations: ["{REG}", "{REG}"]\n',
        "accounts.0.registrations: lists a registration id more than once",
    ),
    (
        f'accounts:\n  - account_id: "{ACCOUNT}"\n    discover: yes please\n',
        "accounts.0.discover: Input should be a valid boolean, unable to interpret input",
    ),
    (
        f'accounts:\n  - account_id: "{ACCOUNT}"\n    discover: true\nmetrics:\n  user_labels: phone\n',
        "metrics.user_labels: Input should be 'none', 'email' or 'hashed'",
    ),
    (
        f'accounts:\n  - account_id: "{ACCOUNT}"\n    discover: true\nmetrics:\n  drop_labels: [account_id]\n',
        "metrics.drop_labels: 'account_id' cannot be dropped; choose from device_id, device_name, "
        "client_version, tunnel_type, key_type, policy_id, policy_name, user_email, user_name, user_hash",
    ),
    ("- just\n- a list\n", "(top level): must be a mapping of keys"),
    ("accounts: [\n", "line 2, column 1: expected the node content, but found '<stream end>'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_bad_config_message(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}: {message}" in str(caught.value).splitlines()


def test_all_errors_are_reported_one_a_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'accounts:\n  - account_id: "xyz"\n    discover: true\napi:\n  retries: 3\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: api.retries: unknown key\n"
        f"{path}: accounts.0.account_id: must be 32 lowercase hexadecimal characters"
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read: No such file or directory"):
        load_config(tmp_path / "nope.yaml")


def test_file_wins_over_environment(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    path = write(
        tmp_path,
        f'api:\n  base_url: "http://file.example/v4/"\n  token_file: token\n'
        f'accounts:\n  - account_id: "{ACCOUNT}"\n    discover: true\n',
    )
    env = {"CLOUDFLARE_API_TOKEN": "from-env", "CLOUDFLARE_BASE_URL": "http://env.example/v4"}
    settings = load_settings(path, env)
    assert settings.token is not None and settings.token.get_secret_value() == "from-file"
    assert settings.base_url == "http://file.example/v4"


def test_environment_used_when_file_is_silent(tmp_path: Path) -> None:
    path = write(tmp_path, f'accounts:\n  - account_id: "{ACCOUNT}"\n    discover: true\n')
    settings = load_settings(
        path, {"CLOUDFLARE_API_TOKEN": "env-token", "CLOUDFLARE_BASE_URL": "http://env.example/v4/"}
    )
    assert settings.token is not None and settings.token.get_secret_value() == "env-token"
    assert settings.base_url == "http://env.example/v4"
    assert "env-token" not in repr(settings)
    default = load_settings(path, {})
    assert default.base_url == "https://api.cloudflare.com/client/v4" and default.token is None


def test_unreadable_token_file_names_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'api:\n  token_file: missing-token\naccounts:\n  - account_id: "{ACCOUNT}"\n    discover: true\n',
    )
    with pytest.raises(
        ConfigError, match=r"config.yaml: api.token_file: cannot read .*missing-token"
    ):
        load_settings(path, {})


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_check_config_bad_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, f'accounts:\n  - account_id: "xyz"\n    registrations: ["{REG}"]\n')
    result = run_cli("--check-config", f"--config.file={path}")
    assert result.returncode == 2
    assert (
        result.stderr
        == f"{path}: accounts.0.account_id: must be 32 lowercase hexadecimal characters\n"
    )
    assert "Traceback" not in result.stderr + result.stdout


def test_check_config_good_prints_one_line_without_token(tmp_path: Path) -> None:
    path = write(
        tmp_path, f'accounts:\n  - account_id: "{ACCOUNT}"\n    registrations: ["{REG}"]\n'
    )
    secret = "super-secret-token-value-123"
    result = run_cli(
        "--check-config",
        f"--config.file={path}",
        env={"CLOUDFLARE_API_TOKEN": secret, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert "1 account(s), 1 configured registration(s)" in result.stdout
    assert "token set" in result.stdout
    assert secret not in result.stdout + result.stderr


def test_serving_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "accounts: []\n")
    result = run_cli(f"--config.file={path}", "--web.listen-address=127.0.0.1:0")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"{path}: accounts: List should have at least 1 item after validation, not 0"
    )


def test_bad_listen_address_exits_2() -> None:
    result = run_cli("--demo", "--web.listen-address=nonsense")
    assert result.returncode == 2
    assert "--web.listen-address: 'nonsense' is not HOST:PORT" in result.stderr


def test_hashed_user_labels_need_a_key_file(tmp_path: Path) -> None:
    base = f'accounts:\n  - account_id: "{ACCOUNT}"\n    discover: true\nmetrics:\n  user_labels: hashed\n'
    path = write(tmp_path, base)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert (
        str(caught.value)
        == f"{path}: metrics.user_hash_key_file: field required when user_labels is hashed"
    )
    (tmp_path / "hash.key").write_text("k3y\n")
    path = write(tmp_path, base + "  user_hash_key_file: hash.key\n")
    settings = load_settings(path, {})
    assert settings.user_hash_key is not None and settings.user_hash_key.get_secret_value() == "k3y"
    assert "k3y" not in repr(settings)
