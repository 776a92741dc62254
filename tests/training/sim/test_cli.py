"""`csipos data simulate` and `csipos data plot`: help texts and clear errors (no ray tracing)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from training.cli import app

runner = CliRunner()


def test_help_texts() -> None:
    for cmd in ("simulate", "plot"):
        result = runner.invoke(app, ["data", cmd, "--help"])
        assert result.exit_code == 0, result.output
    out = runner.invoke(app, ["data", "simulate", "--help"]).output
    assert "--scene" in out and "--preset" in out and "--positions" in out


def test_unknown_scene_and_preset_are_clear_errors(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["data", "simulate", "--scene", "warehouse", "--out", str(tmp_path / "x.h5")]
    )
    assert result.exit_code == 2
    assert "unknown scene" in result.output
    result = runner.invoke(
        app,
        [
            "data",
            "simulate",
            "--scene",
            "lab-los",
            "--preset",
            "huge",
            "--out",
            str(tmp_path / "x.h5"),
        ],
    )
    assert result.exit_code == 2
    assert "unknown preset" in result.output


def test_plot_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "plot", str(tmp_path / "none.h5"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "no such" in result.output
