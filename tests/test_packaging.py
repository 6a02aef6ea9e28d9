"""systemd unit, its environment file, and the sdist and wheel that pip installs (issue 6)."""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "packaging" / "cloudflare-warp-exporter.service"
DEFAULTS = ROOT / "packaging" / "cloudflare-warp-exporter.default"
EXEC_PATH = "/opt/cloudflare-warp-exporter/bin/cloudflare-warp-exporter"


def project_version() -> str:
    text = (ROOT / "exporter" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    assert match
    return match.group(1)


# --- systemd ----------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> every value (keys such as SystemCallFilter repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        assert "=" in line, f"not KEY=VALUE: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_has_the_required_keys_and_hardening() -> None:
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]

    def one(key: str) -> str:
        values = service.get(key)
        assert values, f"[Service] {key} is missing"
        return values[-1]

    assert one("DynamicUser") == "yes"
    assert one("EnvironmentFile").lstrip("-") == "/etc/default/cloudflare-warp-exporter"
    exec_start = one("ExecStart").split()
    assert exec_start[0] == EXEC_PATH
    assert "--config.file=/etc/cloudflare-warp-exporter/config.yaml" in exec_start
    assert "$ARGS" in exec_start
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    for key in (
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert one(key) in {"yes", "strict", "true"}, key
    assert one("CapabilityBoundingSet") == ""
    assert one("RestrictAddressFamilies") == "AF_INET AF_INET6 AF_UNIX"
    assert one("Restart") == "on-failure"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Unit"]["After"][0]


def stubbed_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable stub, as `verify` wants it to exist."""
    stub = tmp_path / "cloudflare-warp-exporter"
    stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stub.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(EXEC_PATH, str(stub)), "utf-8")
    return unit


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed; the unit was parsed by the test above")
    unit = stubbed_unit(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cloudflare-warp-exporter.service" not in result.stderr, result.stderr


def test_systemd_security_exposure_is_low(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = stubbed_unit(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_default_file_is_a_valid_environment_file() -> None:
    assignments = {}
    for raw in DEFAULTS.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), line
        assignments[key] = value
    assert assignments == {"CLOUDFLARE_API_TOKEN": "", "ARGS": ""}, "ship no token, no flags"


# --- sdist and wheel --------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_build_sdist_and_wheel_then_install_and_run(tmp_path: Path) -> None:
    version = project_version()
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    assert sdist.name == f"cloudflare_warp_exporter-{version}.tar.gz"
    assert wheel.name == f"cloudflare_warp_exporter-{version}-py3-none-any.whl"

    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    top = f"cloudflare_warp_exporter-{version}"
    for member in ("PKG-INFO", "pyproject.toml", "exporter/__init__.py", "exporter/py.typed"):
        assert f"{top}/{member}" in names, member

    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
        dist_info = f"cloudflare_warp_exporter-{version}.dist-info"
        metadata_text = archive.read(f"{dist_info}/METADATA").decode()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert "exporter/py.typed" in files
    assert not [name for name in files if name.startswith(("tests/", "bench/"))]

    metadata = email.parser.Parser().parsestr(metadata_text)
    assert metadata["Name"] == "cloudflare-warp-exporter"
    assert metadata["Version"] == version
    assert (metadata["License-Expression"] or metadata["License"]) == "Apache-2.0"
    assert metadata["Requires-Python"]
    assert metadata["Summary"]
    classifiers = metadata.get_all("Classifier") or []
    assert any(c.startswith("Programming Language :: Python :: 3") for c in classifiers)
    urls = metadata.get_all("Project-URL") or []
    assert any(url.lower().startswith("source") for url in urls), urls
    assert metadata.get_all("Requires-Dist")
    assert re.search(
        r"^\[console_scripts\]\s*^cloudflare-warp-exporter\s*=\s*exporter\.cli:main\s*$",
        entry_points,
        re.MULTILINE,
    ), entry_points

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, clear=True)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    installed = subprocess.run(
        [str(bindir / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout[-4000:] + installed.stderr[-4000:]
    ran = subprocess.run(
        [str(bindir / "cloudflare-warp-exporter"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert version in ran.stdout + ran.stderr
    assert "cloudflare-warp-exporter" in ran.stdout + ran.stderr
