"""`csipos train scratch|site --unlabelled`: tracks reach the trainer and the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch
from typer.testing import CliRunner

from tests.training.toychannel import toy_fingerprints, toy_tracks
from training.cli import app
from training.data.fingerprints import EnvironmentMeta, write_environment
from training.data.unlabelled import write_unlabelled

runner = CliRunner()
META = EnvironmentMeta(description="toy", source={"toy": 1})
TINY = ["--min-steps", "4", "--max-steps", "6", "--eval-every", "3", "--quiet"]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    data, tracks = tmp_path / "site.h5", tmp_path / "tracks.h5"
    write_environment(data, "lab", toy_fingerprints(80, (0.0, 0.0), seed=0), META)
    walks, _ = toy_tracks(3, 20, (0.0, 0.0), seed=1)
    write_unlabelled(tracks, "walks", walks, META)
    return data, tracks


def manifest(repo: Path, site: str) -> dict[str, object]:
    config: dict[str, object] = json.loads(
        (repo / "sites" / site / "versions" / "v1" / "manifest.json").read_text()
    )["config"]
    return config


def test_scratch_with_tracks_records_the_counts(files: tuple[Path, Path], tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data, tracks = files
    repo = tmp_path / "models"
    common = ["--data", str(data), "--env", "lab", "--out", str(repo), *TINY]
    result = runner.invoke(
        app, ["train", "scratch", *common, "--site", "walked", "--unlabelled", str(tracks)]
    )
    assert result.exit_code == 0, result.output
    assert "unlabelled: 60 samples on 3 tracks, 57 pairs" in result.stdout
    config = manifest(repo, "walked")
    assert config["unlabelled_samples"] == 60 and config["track_pairs"] == 57
    assert config["unlabelled_tracks"] == 3 and config["unlabelled"] == str(tracks)
    plain = runner.invoke(app, ["train", "scratch", *common, "--site", "plain"])
    assert plain.exit_code == 0, plain.output
    assert manifest(repo, "plain")["track_pairs"] == 0


def test_a_labelled_environment_without_tracks_is_unlabelled_fingerprints(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    """`--unlabelled-env` naming CSI without time and track (here a labelled environment:
    its positions are not read): each sample its own track, pairs found by the channels."""
    data, _ = files
    other = tmp_path / "other.h5"
    write_environment(other, "seen", toy_fingerprints(90, (0.0, 0.0), seed=3), META)
    repo = tmp_path / "models"
    result = runner.invoke(
        app,
        ["train", "scratch", "--data", str(data), "--env", "lab", "--site", "seen",
         "--out", str(repo), "--unlabelled", str(other), "--unlabelled-env", "seen", *TINY],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = manifest(repo, "seen")
    assert config["unlabelled_tracks"] == 90 and config["found_pairs"] == config["track_pairs"]
    assert f"{config['found_pairs']} of them found by their channels" in result.stdout


def test_tracks_without_time_are_a_clear_error(files: tuple[Path, Path], tmp_path: Path) -> None:
    data, tracks = files
    with h5py.File(tracks, "a") as f:
        del f["walks/time"]
    result = runner.invoke(
        app,
        ["train", "scratch", "--data", str(data), "--env", "lab", "--site", "x",
         "--out", str(tmp_path / "m"), "--unlabelled", str(tracks), *TINY],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "group 'walks', field 'time': missing dataset" in result.output
    assert "Traceback" not in result.output
    lonely = runner.invoke(
        app,
        ["train", "scratch", "--data", str(data), "--env", "lab", "--site", "x",
         "--out", str(tmp_path / "m"), "--unlabelled-env", "walks", *TINY],
    )  # fmt: skip
    assert lonely.exit_code == 2 and "--unlabelled-env needs --unlabelled" in lonely.output


def test_walks_set_the_sites_out_of_site_scale(tmp_path: Path) -> None:
    """Five or more tracks also calibrate the served out-of-site score
    (`training.walk_alarm`); the output says on what and with what effect."""
    torch.set_num_threads(1)
    data, tracks = tmp_path / "site.h5", tmp_path / "tracks.h5"
    write_environment(data, "lab", toy_fingerprints(200, (0.0, 0.0), seed=0), META)
    write_unlabelled(tracks, "walks", toy_tracks(5, 20, (0.0, 0.0), seed=1)[0], META)
    args = ["train", "scratch", "--data", str(data), "--env", "lab", "--site", "walked",
            "--out", str(tmp_path / "m"), "--unlabelled", str(tracks), *TINY]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "out of site: threshold scale" in result.stdout
    assert "fitted on 100 walk instants (5 tracks)" in result.stdout
