"""`torchrun --nproc_per_node=2 csipos train meml` on CPU (gloo): valid backbone, falling loss."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_backbone
from training.distributed import session, threads_per_process
from training.repository import ModelRepository


def test_single_process_session_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    try:
        with session() as ses:
            assert ses.is_main and not ses.distributed and ses.shard.world == 1
    finally:
        torch.set_num_threads(threads)
    assert threads_per_process(10_000) == 1


def test_bad_torchrun_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(RuntimeError, match="WORLD_SIZE='two': expected an integer"), session():
        pass


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path: Path, tiny_h5: Path) -> None:
    csipos = shutil.which("csipos")
    if csipos is None:
        pytest.skip("the csipos console script is not installed")
    data = tiny_h5
    out = tmp_path / "models"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "--no-python", csipos, "train", "meml", "--data", str(data),
        "--envs", "industrial/bs0,industrial/bs1", "--out", str(out),
        "--epochs", "3", "--patience", "3", "--batch-size", "32", "--min-steps", "0",
        "--eval-every", "3",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes, backend gloo" in proc.stderr
    # Only rank 0 logs and publishes: one line per validation, one version. A rank holds
    # 68 of each environment's 135 training samples: 3 steps of 32 an epoch.
    assert proc.stderr.count("step      3 (epoch") == 1

    repo = ModelRepository(out)
    assert repo.versions("backbone", "meml") == ["v1"]
    manifest = repo.manifest("backbone", "meml")
    assert manifest["config"]["world_size"] == 2
    history = manifest["metrics"]["train_loss_history"]
    assert len(history) == 3 and history[-1] < history[0]
    backbone = load_backbone(repo, "meml")
    features = backbone(torch.randn(4, 8, 103, 2))
    assert features.shape == (4, 128) and bool(torch.isfinite(features).all())
    assert json.dumps(manifest["metrics"]["val"])  # per-env validation metrics published
