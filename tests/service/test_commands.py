"""`csipos serve` startup: seeding a new model repository from CSIPOS_SEED_MODELS_FROM."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.service.conftest import LOCATE, REPO_ROOT, Server, csi_batch, settings_env
from training.repository import ModelRepository


def test_serve_seeds_an_empty_repository_then_serves_its_sites(
    repo: ModelRepository, tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    volume = tmp_path / "volume"  # what a new Docker volume looks like: an empty folder
    volume.mkdir()
    server = start_server(env={"CSIPOS_MODEL_DIR": str(volume)}, seed_models_from=repo.root)
    sites = httpx.get(server.url + "/sites", headers=LOCATE, timeout=5).json()["sites"]
    assert {s["site"]: s["serving_version"] for s in sites} == {"lab-mse": "v1", "lab-nll": "v1"}
    r = httpx.post(
        server.url + "/locate",
        json={"site": "lab-nll", "csi": csi_batch(2).tolist()},
        headers=LOCATE,
        timeout=5,
    )
    assert r.status_code == 200 and len(r.json()["positions"]) == 2
    assert ModelRepository(volume).site_versions("lab-nll") == ["v1", "v2"]
    assert (volume / ".seeded.json").exists()


def test_serve_refuses_to_start_when_the_seed_source_is_missing(
    repo: ModelRepository, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-models"
    env = {**os.environ, **settings_env(repo, tmp_path, seed_models_from=missing)}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", "from service.cli import main; main()", "serve", "--port", "1"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"cannot seed the model repository {repo.root} from {missing}" in proc.stderr
    assert "not a directory" in proc.stderr
