"""The container image, the Compose stack and the Kubernetes manifests (issue 6).

No docker engine is assumed: the Dockerfile is linted with hadolint, compose.yaml is validated
against the Compose specification schema, and the kustomize base is rendered with
``kubectl kustomize`` and validated with ``kubernetes-validate``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
PROMETHEUSRULE = KUSTOMIZE_DIR / "prometheusrule.yaml"
GENERATOR = ROOT / "scripts" / "gen_prometheusrule.py"
VALID_ACCOUNT_ID = "0123456789abcdef0123456789abcdef"


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    result = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def test_hadolint_passes_without_ignores() -> None:
    hadolint = require_tool("hadolint")
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "hadolint ignore" not in text
    for config in (".hadolint.yaml", ".hadolint.yml"):
        assert not (ROOT / config).exists(), f"{config} would hide hadolint rules"
    result = run(hadolint, "--failure-threshold", "style", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_on_a_pinned_slim_base() -> None:
    froms = [args for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert len(froms) >= 2, "build the wheel in one stage, install it in another"
    final = froms[-1].split()[0]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", final), final
    assert "AS" in froms[0].upper().split(), "the build stage is named"
    runs = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "RUN")
    assert "pip wheel" in runs
    assert "from=build" in runs, "the final stage installs the wheels from the build stage"
    for forbidden in ("apt-get install", "gcc", "build-essential"):
        assert forbidden not in runs


def test_dockerfile_runtime_contract() -> None:
    instructions = dockerfile_instructions()
    final_stage: list[tuple[str, str]] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            final_stage = []
        final_stage.append((keyword, args))
    by_keyword: dict[str, list[str]] = {}
    for keyword, args in final_stage:
        by_keyword.setdefault(keyword, []).append(args)

    user = by_keyword["USER"][-1]
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric UID, so runAsNonRoot can check it"
    assert int(uid) != 0
    assert by_keyword["EXPOSE"] == ["9787"]
    assert by_keyword["ENTRYPOINT"] == ['["cloudflare-warp-exporter"]']
    assert by_keyword["CMD"] == ['["--config.file", "/etc/cloudflare-warp-exporter/config.yaml"]']

    healthcheck = by_keyword["HEALTHCHECK"][-1]
    assert "python" in healthcheck
    assert "/-/healthy" in healthcheck
    for tool in ("curl", "wget"):
        assert tool not in healthcheck

    labels = " ".join(by_keyword["LABEL"])
    for key in ("source", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels
    copies = " ".join(by_keyword.get("COPY", []))
    assert "tests" not in copies


def test_dockerignore_keeps_venv_tests_and_caches_out() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", "tests", ".git", "**/__pycache__", ".mypy_cache", ".pytest_cache"):
        assert required in patterns, required
    # Nothing the build stage copies may be ignored.
    for needed in ("pyproject.toml", "README.md", "exporter"):
        assert needed not in patterns, needed


# --- compose.yaml -----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def interpolate_defaults(value: str) -> str:
    """Resolve ``${VAR:-default}`` / ``${VAR-default}`` to their defaults, like an empty env."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def bind_mounts() -> list[tuple[str, str, str]]:
    """(service, host path, container path) for every bind mount in compose.yaml."""
    mounts = []
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                if volume.get("type") != "bind":
                    continue
                source, target = str(volume["source"]), str(volume["target"])
            else:
                source, _, rest = interpolate_defaults(volume).partition(":")
                target = rest.split(":")[0]
            source = interpolate_defaults(source)
            if source.startswith((".", "/")):
                mounts.append((name, source, target))
    return mounts


def test_compose_matches_the_compose_specification() -> None:
    checker = require_tool("check-jsonschema")
    result = run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_mounts_only_files_in_the_repo() -> None:
    mounts = bind_mounts()
    assert mounts
    missing = [
        f"{service}: {source}" for service, source, _ in mounts if not (ROOT / source).exists()
    ]
    assert not missing, f"compose.yaml mounts paths missing from the repo: {missing}"
    for _, source, _ in mounts:
        assert not Path(source).is_absolute(), "mount repo files by relative path"
        assert (ROOT / source).resolve().is_relative_to(ROOT)
    # A file that .gitignore matches exists here but not in a fresh clone.
    if shutil.which("git") and (ROOT / ".git").exists():
        sources = [source for _, source, _ in mounts]
        ignored = run("git", "check-ignore", "--no-index", *sources).stdout.split()
        assert not ignored, f".gitignore hides mounted files: {ignored}"
    build = compose()["services"]["cloudflare-warp-exporter"]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (ROOT / context / "Dockerfile").is_file()


def test_compose_stack_has_every_service() -> None:
    services = compose()["services"]
    assert {"cloudflare-warp-exporter", "prometheus", "alertmanager", "grafana"} <= set(services)
    for name, service in services.items():
        if "image" in service and "build" not in service:
            image = service["image"]
            assert ":" in image, f"{name}: pin the image tag"
            assert not image.endswith(":latest"), f"{name}: pin the image tag"


def test_compose_exporter_runs_demo_unless_a_token_is_set() -> None:
    exporter = compose()["services"]["cloudflare-warp-exporter"]
    assert "CLOUDFLARE_API_TOKEN" in exporter["environment"]
    script = " ".join([*exporter.get("entrypoint", []), *exporter.get("command", [])])
    assert "--demo" in script
    assert "$${CLOUDFLARE_API_TOKEN}" in script, "escape $ so Compose leaves it to the shell"
    assert "--config.file /etc/cloudflare-warp-exporter/config.yaml" in script


def test_compose_shell_wrapper_picks_the_mode(tmp_path: Path) -> None:
    """Run the exporter service's shell script with a stub exporter, with and without a token."""
    sh = require_tool("sh")
    exporter = compose()["services"]["cloudflare-warp-exporter"]
    assert exporter["entrypoint"] == ["/bin/sh", "-c"]
    script = exporter["command"][0].replace("$$", "$")
    stub = tmp_path / "cloudflare-warp-exporter"
    stub.write_text('#!/bin/sh\necho "ARGS: $*"\n', encoding="utf-8")
    stub.chmod(0o755)
    base_env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}
    demo = subprocess.run(
        [sh, "-c", script], env=base_env, capture_output=True, text=True, check=True
    )
    assert demo.stdout.strip() == "ARGS: --demo"
    real = subprocess.run(
        [sh, "-c", script],
        env={**base_env, "CLOUDFLARE_API_TOKEN": "t0ken"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert real.stdout.strip() == "ARGS: --config.file /etc/cloudflare-warp-exporter/config.yaml"


def container_to_host(service: str, container_path: str) -> Path | None:
    """The repo file a container path comes from, through that service's bind mounts."""
    for name, source, target in bind_mounts():
        if name != service:
            continue
        if container_path == target:
            return ROOT / source
        if container_path.startswith(target.rstrip("/") + "/"):
            return ROOT / source / container_path[len(target.rstrip("/")) + 1 :]
    return None


def test_compose_grafana_home_dashboard_is_the_mounted_fleet_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    host = container_to_host("grafana", home)
    assert host is not None, f"{home} is not inside a mount"
    assert host.is_file(), host
    assert host.name == "cloudflare-warp-fleet.json"
    targets = {target for name, _, target in bind_mounts() if name == "grafana"}
    assert any(t.startswith("/etc/grafana/provisioning") for t in targets)


def container_file(service: str, flag: str, default: str) -> tuple[PurePosixPath, Path]:
    """The container path a service's ``flag=`` (or its default) names, and its repo file."""
    command = compose()["services"][service].get("command", [])
    given = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{flag}=")]
    path = PurePosixPath(given[0] if given else default)
    host = container_to_host(service, str(path))
    assert host is not None, f"{service}: {path} is not inside a mount"
    assert host.is_file(), host
    return path, host


def compose_prometheus_config() -> tuple[PurePosixPath, Path, dict[str, Any]]:
    path, host = container_file("prometheus", "--config.file", "/etc/prometheus/prometheus.yml")
    return path, host, yaml.safe_load(host.read_text(encoding="utf-8"))


def host_of(address: str) -> str:
    return urlsplit(address if "//" in address else f"//{address}").hostname or ""


def test_compose_prometheus_addresses_the_compose_services() -> None:
    services = set(compose()["services"])
    _, _, config = compose_prometheus_config()
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert "cloudflare-warp-exporter:9787" in targets
    for target in targets:
        assert host_of(target) in services | {"localhost", "127.0.0.1"}, target
    alertmanagers = [
        target
        for am in config["alerting"]["alertmanagers"]
        for static in am["static_configs"]
        for target in static["targets"]
    ]
    assert alertmanagers
    assert {host_of(target) for target in alertmanagers} == {"alertmanager"}


def test_compose_grafana_datasources_address_the_compose_services() -> None:
    services = set(compose()["services"])
    directory = container_to_host("grafana", "/etc/grafana/provisioning/datasources")
    assert directory is not None and directory.is_dir()
    urls = [
        source["url"]
        for path in sorted(directory.glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text(encoding="utf-8")).get("datasources", [])
    ]
    assert urls
    for url in urls:
        assert host_of(url) in services, url


def test_compose_prometheus_and_alertmanager_load_the_repo_files() -> None:
    path, _, config = compose_prometheus_config()
    rule_sources = {
        container_to_host("prometheus", str(path.parent / rule)) for rule in config["rule_files"]
    }
    assert rule_sources == {ROOT / "prometheus" / "alerts.yml", ROOT / "prometheus" / "rules.yml"}
    _, am_host = container_file(
        "alertmanager", "--config.file", "/etc/alertmanager/alertmanager.yml"
    )
    assert am_host == ROOT / "prometheus" / "alertmanager.yml"


def test_compose_prometheus_config_passes_promtool() -> None:
    promtool = require_tool("promtool")
    path, host, config = compose_prometheus_config()
    for rule in config["rule_files"]:
        # promtool resolves rule files beside the config: that only works for a mounted dir.
        assert container_to_host("prometheus", str(path.parent / rule)) == host.parent / rule
    result = run(promtool, "check", "config", str(host))
    assert result.returncode == 0, result.stdout + result.stderr


# --- example configs shipped with the deployments ---------------------------------------------


@pytest.mark.parametrize(
    "path",
    [ROOT / "deploy" / "compose" / "exporter-config.yaml", KUSTOMIZE_DIR / "exporter-config.yaml"],
    ids=["compose", "kubernetes"],
)
def test_placeholder_configs_are_valid_once_the_account_id_is_filled_in(path: Path) -> None:
    config_module = pytest.importorskip("exporter.config")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for account in data["accounts"]:
        assert account["account_id"].startswith("REPLACE"), "ship a placeholder, not an id"
        account["account_id"] = VALID_ACCOUNT_ID
    config_module.parse_config(data, str(path))


# --- Kubernetes -------------------------------------------------------------------------------


def kustomize_build() -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl")
    result = run(kubectl, "kustomize", str(KUSTOMIZE_DIR))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


BUILT_IN_API_GROUPS = ("v1", "apps/v1")


def test_kustomize_base_renders_and_validates(tmp_path: Path) -> None:
    validator = require_tool("kubernetes-validate")
    docs = kustomize_build()
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor"]
    )
    built_in = [doc for doc in docs if doc["apiVersion"] in BUILT_IN_API_GROUPS]
    files = []
    for index, doc in enumerate(built_in):
        path = tmp_path / f"{index}-{doc['kind'].lower()}.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        files.append(str(path))
    result = run(validator, "--strict", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomization_uses_only_fields_old_kustomize_knows() -> None:
    """CI may get kubectl from Debian (1.20, kustomize v2), which rejects newer fields."""
    kustomization = yaml.safe_load((KUSTOMIZE_DIR / "kustomization.yaml").read_text("utf-8"))
    kustomize_v2_fields = {
        "apiVersion",
        "kind",
        "resources",
        "configMapGenerator",
        "secretGenerator",
        "generatorOptions",
        "images",
        "namespace",
        "namePrefix",
        "nameSuffix",
        "commonAnnotations",
        "patchesStrategicMerge",
        "patchesJson6902",
    }
    assert set(kustomization) <= kustomize_v2_fields, set(kustomization) - kustomize_v2_fields


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [doc for doc in docs if doc["kind"] == kind]
    assert len(matches) == 1, kind
    return matches[0]


def test_deployment_is_locked_down_and_probed() -> None:
    docs = kustomize_build()
    deployment = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["image"].startswith("ghcr.io/")
    assert any(
        arg.startswith("--config.file=/etc/cloudflare-warp-exporter/") for arg in container["args"]
    )

    (token,) = [env for env in container["env"] if env["name"] == "CLOUDFLARE_API_TOKEN"]
    assert "secretKeyRef" in token["valueFrom"]

    configmap = by_kind(docs, "ConfigMap")
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert "config.yaml" in configmap["data"]


def test_service_and_servicemonitor_select_the_exporter() -> None:
    docs = kustomize_build()
    deployment = by_kind(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = by_kind(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = by_kind(docs, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= service_ports
    # The generated rules select on the job name of prometheus/prometheus.yml.
    for endpoint in monitor["spec"]["endpoints"]:
        jobs = [r for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "job"]
        assert [r["replacement"] for r in jobs] == ["cloudflare-warp"]
    assert 'job="cloudflare-warp"' in PROMETHEUSRULE.read_text(encoding="utf-8")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_prometheusrule", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_is_generated_from_the_rule_files() -> None:
    generator = load_generator()
    for source in generator.SOURCES:
        if not source.exists():
            pytest.fail(f"{source.relative_to(ROOT)} is missing")
    expected = generator.render()
    current = PROMETHEUSRULE.read_text(encoding="utf-8") if PROMETHEUSRULE.exists() else ""
    if current != expected:
        pytest.fail(
            "deploy/kubernetes/prometheusrule.yaml is out of date with prometheus/alerts.yml "
            "and prometheus/rules.yml: run python scripts/gen_prometheusrule.py"
        )


def test_prometheusrule_carries_every_group_of_both_rule_files() -> None:
    rule = yaml.safe_load(PROMETHEUSRULE.read_text(encoding="utf-8"))
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    groups = rule["spec"]["groups"]
    expected: list[Any] = []
    for name in ("rules.yml", "alerts.yml"):
        expected += yaml.safe_load((ROOT / "prometheus" / name).read_text(encoding="utf-8"))[
            "groups"
        ]
    assert groups == expected
    for group in groups:
        assert group["rules"], group["name"]
        for item in group["rules"]:
            assert ("alert" in item) != ("record" in item), item
            assert item["expr"]


def test_generator_renders_block_strings_and_rejects_duplicate_groups(tmp_path: Path) -> None:
    generator = load_generator()
    one = tmp_path / "rules.yml"
    one.write_text(
        "groups:\n  - name: g\n    rules:\n      - record: a:b:sum\n        expr: |\n"
        "          sum(\n            b\n          )\n",
        encoding="utf-8",
    )
    text = generator.render((one,))
    assert "expr: |" in text
    assert yaml.safe_load(text)["spec"]["groups"][0]["rules"][0]["expr"] == "sum(\n  b\n)\n"
    with pytest.raises(ValueError, match="unique"):
        generator.render((one, one))


def test_generator_check_mode_agrees_with_the_committed_file() -> None:
    result = run(sys.executable, str(GENERATOR), "--check")
    assert result.returncode == 0, result.stdout + result.stderr
