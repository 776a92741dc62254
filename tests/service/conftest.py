"""Fixtures: a repository with tiny site models, settings, a TestClient, a real uvicorn."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.service.models import publish_linear
from training.repository import ModelRepository

ADMIN_KEY = "admin-key-0123456789abcdef"
LOCATE_KEY = "locate-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
LOCATE = {"Authorization": f"Bearer {LOCATE_KEY}"}
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def csi_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8, 103, 2)).astype(np.float32)


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    """`lab-nll` (nll; v1 active, v2 published but inactive) and `lab-mse` (mse, v1)."""
    r = ModelRepository(tmp_path / "models")
    publish_linear(r, "lab-nll", "nll", seed=1, bias=(1.0, 2.0))
    publish_linear(r, "lab-nll", "nll", seed=2, bias=(50.0, 60.0), activate=False)
    publish_linear(r, "lab-mse", "mse", seed=3, bias=(-1.0, -2.0))
    return r


def settings_env(repo: ModelRepository, tmp_path: Path, **extra: Any) -> dict[str, str]:
    env = {
        "CSIPOS_MODEL_DIR": str(repo.root),
        "CSIPOS_JOB_DIR": str(tmp_path / "jobs"),
        "CSIPOS_ADMIN_KEYS": ADMIN_KEY,
        "CSIPOS_LOCATE_KEYS": LOCATE_KEY,
        "CSIPOS_WATCH_INTERVAL_S": "0.2",
        "CSIPOS_ADAPT_ENTRYPOINT": "tests.service.fake_trainer:adapt_site",
        "CSIPOS_INFERENCE_THREADS": "2",
        "CSIPOS_MIN_ADAPT_SAMPLES": "10",
        "CSIPOS_JOB_STALE_AFTER_S": "10",
        "CSIPOS_LOG_LEVEL": "WARNING",
    }
    env.update({f"CSIPOS_{k.upper()}": str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def make_settings(
    repo: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Settings]:
    def make(**extra: Any) -> Settings:
        for key, value in settings_env(repo, tmp_path, **extra).items():
            monkeypatch.setenv(key, value)
        return Settings()

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


class Server:
    """A real `csipos serve` process on loopback."""

    def __init__(
        self,
        env: dict[str, str],
        workers: int = 1,
        args: Sequence[str] = (),
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from service.cli import main; main()",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--log-level",
                "warning",
                *args,
            ],
            env=full_env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=preexec,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"server exited early: {err[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become ready in 30 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_server(repo: ModelRepository, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(
        workers: int = 1,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
        preexec: Callable[[], None] | None = None,
        **extra: Any,
    ) -> Server:
        s = Server({**settings_env(repo, tmp_path, **extra), **(env or {})}, workers, args, preexec)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real `redis-server` on a free loopback port, without persistence."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    from redis import Redis

    conn = Redis(port=port)
    for _ in range(100):
        try:
            conn.ping()
            break
        except Exception:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)
