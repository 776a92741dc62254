"""`csipos data info` and `csipos data import-dichasus` (training/cli/data.py)."""

from __future__ import annotations

from pathlib import Path

import h5py
from typer.testing import CliRunner

from tests.training.data import dichasus_files as dfiles
from tests.training.data.conftest import make_fingerprints
from training.cli.data import app
from training.data.fingerprints import EnvironmentMeta, read_environment, write_environment

runner = CliRunner()


def test_info_shows_each_environment(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    data = make_fingerprints(40, seed=1)
    assert data.los is not None and data.snr_db is not None
    data.los[:] = False
    data.los[:10] = True
    meta = EnvironmentMeta(source={"generator": "csipos.sim", "version": "0.1.0"})
    write_environment(path, "industrial/bs0", data, meta)
    write_environment(path, "lab-los", make_fingerprints(7, optional=False), EnvironmentMeta())
    result = runner.invoke(app, ["info", str(path), "--check"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "industrial/bs0" in out and "lab-los" in out
    assert "25 %" in out  # LOS share 10/40
    assert "csipos.sim 0.1.0" in out
    lo, hi = float(data.pos[:, 0].min()), float(data.pos[:, 0].max())
    assert f"{lo:.1f}..{hi:.1f}" in out
    snr_lo = float(data.snr_db.min())
    assert f"{snr_lo:.1f}.." in out


def test_info_reports_schema_errors_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    write_environment(path, "env", make_fingerprints(5), EnvironmentMeta())
    with h5py.File(path, "a") as f:
        del f["env"].attrs["carrier_hz"]
    result = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "carrier_hz" in result.output and "missing group attribute" in result.output
    assert "Traceback" not in result.output


def test_import_dichasus_command(tmp_path: Path) -> None:
    spec = dfiles.write_spec(tmp_path / "spec.json")
    f = dfiles.write_file(tmp_path / "a.tfrecords", [3.0, 1.0, 2.0])
    out = tmp_path / "out.h5"
    args = ["import-dichasus", str(f), "--spec", str(spec), "--out", str(out)]
    args += ["--array", "1", "--subarray", "2,0", "--group", "dichasus/b", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = read_environment(out, "dichasus/b")
    assert len(data) == 3 and data.pos[:, 0].tolist() == [1.0, 2.0, 0.0]
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output
    bad = runner.invoke(app, [*args[:-5], "--subarray", "3,0", "--group", "x", "-q"])
    assert bad.exit_code == 1 and "does not fit" in bad.output


def test_every_command_has_help() -> None:
    for command in (["--help"], ["info", "--help"], ["import-dichasus", "--help"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0 and "Usage" in result.output
