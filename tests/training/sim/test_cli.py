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


def test_procedural_options_are_checked(tmp_path: Path) -> None:
    out = str(tmp_path / "x.h5")
    cases = [
        (["--scene", "procedural"], "needs --count"),
        (["--scene", "procedural", "--scene", "lab-los", "--count", "2"], "cannot be mixed"),
        (["--scene", "lab-los", "--count", "2"], "--count needs --scene procedural"),
        (["--scene", "procedural", "--count", "2", "--chain", "odd"], "random or nominal"),
        (["--scene", "procedural", "--count", "2", "--preset", "paper"], "procedural preset"),
        (["--scene", "lab-los", "--min-bs", "3"], "--min-bs needs --scene procedural"),
        (["--scene", "procedural", "--count", "1", "--min-bs", "5"], "--min-bs: max_base"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["data", "simulate", *args, "--out", out])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)


def test_scenes_writes_yaml_and_a_contact_sheet(tmp_path: Path) -> None:
    from training.sim.procedural import procedural_scene
    from training.sim.scene import SceneSpec

    result = runner.invoke(
        app, ["data", "scenes", "--count", "3", "--seed", "10", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert SceneSpec.load(tmp_path / "s0011.yaml") == procedural_scene(11, "corpus")
    assert (tmp_path / "contact-sheet.png").stat().st_size > 10_000


def test_executor_options_are_procedural_only_and_checked(tmp_path: Path) -> None:
    out = runner.invoke(app, ["data", "simulate", "--help"]).output
    assert "--executor" in out and "--address" in out and "--task-cpus" in out
    base = ["data", "simulate", "--out", str(tmp_path / "x.h5")]
    fixed = runner.invoke(app, [*base, "--scene", "lab-los", "--executor", "ray"])
    assert fixed.exit_code == 2 and "--executor needs --scene procedural" in fixed.output
    proc = [*base, "--scene", "procedural", "--count", "1"]
    bad = runner.invoke(app, [*proc, "--executor", "dask"])
    assert bad.exit_code == 2 and "--executor" in bad.output
    stray = runner.invoke(app, [*proc, "--address", "10.0.0.1:6379"])
    assert stray.exit_code == 2 and "--address" in stray.output
