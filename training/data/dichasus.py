"""Import DICHASUS measurement files (TFRecord) into one fingerprint environment.

DICHASUS records (https://dichasus.inue.uni-stuttgart.de) are `tf.train.Example`s:

- ``csi``: bytes, a serialized TensorProto float32 [n_ant, 1024, 2] (real/imag, FFT
  bin order, so we `fftshift` by default to put the band in frequency order);
- ``pos-tachy``: bytes, a serialized TensorProto float64 [3] (tachymeter x, y, z);
- ``time``: float32 scalar (float list); ``snr``: bytes, a serialized TensorProto
  float32 [n_ant] (assumed linear power ratio unless told ``snr_unit="db"``);
  ``cfo`` and others are ignored.

The dataset's spec.json maps antennas to arrays: ``antennas[i].assignments`` is a
2-D grid (rows x columns) of channel indices into the ``csi`` antenna axis, -1
(or a short row) for an unused slot; ``antennas[i].location`` (if present) is the
array centre. Our fingerprints need a 4x2 URA, i.e. a window of 2 rows x 4
columns of that grid, flattened row by row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from training.data.fingerprints import EnvironmentMeta, Fingerprints, write_environment
from training.data.schema import (
    ARRAY_LAYOUT,
    BANDWIDTH_HZ,
    CARRIER_HZ,
    FFT_SIZE,
    N_SUBCARRIERS,
    SUBCARRIER_STRIDE,
)
from training.data.tfrecord import (
    FeatureValue,
    ProtobufError,
    decode_example,
    read_records,
    scalar_feature,
    tensor_feature,
)

__all__ = [
    "SUBARRAY_COLS",
    "SUBARRAY_ROWS",
    "DichasusError",
    "DichasusSpec",
    "import_dichasus",
    "import_dichasus_to_file",
    "load_spec",
    "parse_subcarriers",
    "select_antennas",
]

SUBARRAY_ROWS = 2
SUBARRAY_COLS = 4
"""Our '4x2' array is 4 columns wide and 2 rows high, the layout of a DICHASUS 2x4 array."""

DEFAULT_SUBCARRIERS: tuple[int, ...] = tuple(range(0, FFT_SIZE, SUBCARRIER_STRIDE))
SnrUnit = Literal["linear", "db"]
_SNR_FLOOR = 1e-6  # linear; keeps log10 finite for a (rare) zero noise estimate


class DichasusError(ValueError):
    """A DICHASUS file, record or spec that cannot be imported as asked."""


@dataclass(frozen=True)
class DichasusSpec:
    """The parts of a DICHASUS spec.json that the importer needs."""

    arrays: list[npt.NDArray[np.int64]]
    """Per array, its grid of channel indices (rows x columns), -1 where unused."""
    locations: list[tuple[float, float, float] | None]
    carrier_hz: float
    bandwidth_hz: float
    path: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_antennas(self) -> int:
        """Antennas in the records' `csi` axis (every assigned channel index)."""
        return int(sum(int((grid >= 0).sum()) for grid in self.arrays))


def load_spec(path: str | Path) -> DichasusSpec:
    """Read spec.json; ragged assignment rows are padded with -1."""
    spath = str(path)
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError) as exc:
        raise DichasusError(f"{spath}: not a readable JSON spec: {exc}") from exc
    antennas = raw.get("antennas") if isinstance(raw, dict) else None
    if not isinstance(antennas, list) or not antennas:
        raise DichasusError(f"{spath}: expected a non-empty 'antennas' list")
    arrays: list[npt.NDArray[np.int64]] = []
    locations: list[tuple[float, float, float] | None] = []
    for i, antenna in enumerate(antennas):
        rows = antenna.get("assignments") if isinstance(antenna, dict) else None
        if (
            not isinstance(rows, list)
            or not rows
            or not all(isinstance(r, list) and all(isinstance(v, int) for v in r) for r in rows)
        ):
            raise DichasusError(
                f"{spath}: antennas[{i}].assignments must be a list of rows of ints"
            )
        width = max(len(r) for r in rows)
        grid = np.full((len(rows), width), -1, dtype=np.int64)
        for r, row in enumerate(rows):
            grid[r, : len(row)] = row
        arrays.append(grid)
        loc = antenna.get("location")
        if isinstance(loc, list) and len(loc) == 3 and all(isinstance(v, int | float) for v in loc):
            locations.append((float(loc[0]), float(loc[1]), float(loc[2])))
        else:
            locations.append(None)
    used = np.concatenate([g[g >= 0] for g in arrays])
    if used.size != np.unique(used).size:
        raise DichasusError(f"{spath}: a channel index is assigned to more than one antenna")

    def number(key: str, default: float) -> float:
        value = raw.get(key, default)
        return float(value) if isinstance(value, int | float) and value > 0 else default

    return DichasusSpec(
        arrays=arrays,
        locations=locations,
        carrier_hz=number("frequency", CARRIER_HZ),
        bandwidth_hz=number("bandwidth", BANDWIDTH_HZ),
        path=spath,
        raw=raw,
    )


def select_antennas(spec: DichasusSpec, array: int, subarray: tuple[int, int]) -> list[int]:
    """Channel indices of the 2x4 window at (row, col) of array `array`, row by row."""
    if not 0 <= array < len(spec.arrays):
        raise DichasusError(
            f"{spec.path}: array {array} does not exist; "
            f"the spec has arrays 0..{len(spec.arrays) - 1}"
        )
    grid = spec.arrays[array]
    row, col = subarray
    rows, cols = grid.shape
    if row < 0 or col < 0 or row + SUBARRAY_ROWS > rows or col + SUBARRAY_COLS > cols:
        raise DichasusError(
            f"{spec.path}: array {array} is {rows} rows x {cols} columns; a {SUBARRAY_ROWS}x"
            f"{SUBARRAY_COLS} window at row {row}, column {col} does not fit "
            f"(valid offsets: rows 0..{rows - SUBARRAY_ROWS}, columns 0..{cols - SUBARRAY_COLS})"
        )
    window = grid[row : row + SUBARRAY_ROWS, col : col + SUBARRAY_COLS]
    if (window < 0).any():
        raise DichasusError(
            f"{spec.path}: the window at row {row}, column {col} of array {array} has unused "
            f"antenna slots ({window.tolist()}); pick another sub-array"
        )
    return [int(v) for v in window.ravel()]


def parse_subcarriers(text: str) -> list[int]:
    """Parse 'start:stop:step' (Python slice of the 1024 bins) or a comma list of indices."""
    text = text.strip()
    try:
        if ":" in text:
            parts = [int(p) if p else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            values = list(range(FFT_SIZE))[slice(*parts)]
        else:
            values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise DichasusError(
            f"subcarriers {text!r}: expected 'start:stop:step' (e.g. 0:1024:10) or a comma list"
        ) from None
    return _check_subcarriers(values)


def _check_subcarriers(values: Sequence[int]) -> list[int]:
    out = [int(v) for v in values]
    if len(out) != N_SUBCARRIERS:
        raise DichasusError(
            f"{len(out)} subcarriers selected; the fingerprint schema needs exactly "
            f"{N_SUBCARRIERS} (default: every {SUBCARRIER_STRIDE}th of {FFT_SIZE})"
        )
    if any(not 0 <= v < FFT_SIZE for v in out) or sorted(set(out)) != out:
        raise DichasusError(f"subcarriers must be distinct, increasing and in [0, {FFT_SIZE})")
    return out


@dataclass
class _Columns:
    csi: list[npt.NDArray[np.float32]] = field(default_factory=list)
    pos: list[npt.NDArray[np.float64]] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    snr_db: list[float] = field(default_factory=list)


def _record_error(path: Path, index: int, problem: str) -> DichasusError:
    return DichasusError(f"{path}: record {index}: {problem}")


def _parse_record(
    example: dict[str, FeatureValue],
    path: Path,
    index: int,
    n_antennas: int,
    antennas: npt.NDArray[np.int64],
    subcarriers: npt.NDArray[np.int64],
    fftshift: bool,
    snr_unit: SnrUnit,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], float, float | None]:
    for key in ("csi", "pos-tachy", "time"):
        if key not in example:
            raise _record_error(path, index, f"feature '{key}' is missing")
    try:
        csi = tensor_feature(example, "csi")
        pos = tensor_feature(example, "pos-tachy")
        time = scalar_feature(example, "time")
        snr = tensor_feature(example, "snr") if "snr" in example else None
    except ProtobufError as exc:
        raise _record_error(path, index, str(exc)) from exc
    want = (n_antennas, FFT_SIZE, 2)
    if csi.shape != want or csi.dtype != np.float32:
        raise _record_error(
            path,
            index,
            f"csi has shape {list(csi.shape)} {csi.dtype}, expected {list(want)} float32 "
            "(antennas from spec.json x 1024 subcarriers x real/imag)",
        )
    if pos.shape != (3,) or pos.dtype.kind != "f":
        raise _record_error(
            path, index, f"pos-tachy has shape {list(pos.shape)} {pos.dtype}, expected [3] float64"
        )
    if fftshift:
        csi = np.fft.fftshift(csi, axes=1)
    reduced = np.ascontiguousarray(csi[antennas][:, subcarriers], dtype=np.float32)
    snr_db: float | None = None
    if snr is not None:
        if snr.shape != (n_antennas,):
            raise _record_error(
                path, index, f"snr has shape {list(snr.shape)}, expected [{n_antennas}]"
            )
        linear = snr[antennas].astype(np.float64)
        if snr_unit == "db":
            linear = 10.0 ** (linear / 10.0)
        snr_db = 10.0 * math.log10(max(float(linear.mean()), _SNR_FLOOR))
    return reduced, pos.astype(np.float64), time, snr_db


def _version() -> str:
    try:
        return metadata.version("csipos")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def import_dichasus(
    files: Sequence[str | Path],
    spec: str | Path | DichasusSpec,
    *,
    array: int = 0,
    subarray: tuple[int, int] = (0, 0),
    subcarriers: Sequence[int] | None = None,
    fftshift: bool = True,
    snr_unit: SnrUnit = "linear",
    on_record: Callable[[int], None] | None = None,
) -> tuple[Fingerprints, EnvironmentMeta]:
    """Read DICHASUS TFRecord `files` into fingerprints of one 4x2 sub-array, sorted by time.

    `on_record(nbytes)` is called after each record (for progress bars). Positions
    are the tachymeter's x, y in metres; `snr_db` is the mean SNR of the 8 chosen
    antennas. Raises `DichasusError` naming the file and record for a bad record.
    """
    if not files:
        raise DichasusError("no TFRecord files given")
    if snr_unit not in ("linear", "db"):
        raise DichasusError(f"snr_unit must be 'linear' or 'db', got {snr_unit!r}")
    the_spec = spec if isinstance(spec, DichasusSpec) else load_spec(spec)
    antenna_list = select_antennas(the_spec, array, subarray)
    chosen = _check_subcarriers(DEFAULT_SUBCARRIERS if subcarriers is None else subcarriers)
    antennas = np.asarray(antenna_list, dtype=np.int64)
    carriers = np.asarray(chosen, dtype=np.int64)
    n_antennas = the_spec.n_antennas

    cols = _Columns()
    snr_seen: list[bool] = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such TFRecord file")
        for index, record in enumerate(read_records(path)):
            try:
                example = decode_example(record)
            except ProtobufError as exc:
                raise _record_error(path, index, f"not a tf.train.Example: {exc}") from exc
            csi, pos, time, snr_db = _parse_record(
                example, path, index, n_antennas, antennas, carriers, fftshift, snr_unit
            )
            cols.csi.append(csi)
            cols.pos.append(pos)
            cols.time.append(time)
            snr_seen.append(snr_db is not None)
            cols.snr_db.append(float("nan") if snr_db is None else snr_db)
            if on_record is not None:
                on_record(len(record) + 16)
    if not cols.csi:
        raise DichasusError(f"no records in {', '.join(str(f) for f in files)}")

    # Records of several files (or one unsorted file) are merged into time order;
    # a stable sort keeps the file order for equal times.
    order = np.argsort(np.asarray(cols.time, dtype=np.float64), kind="stable")
    pos_all = np.stack(cols.pos)[order]
    data = Fingerprints(
        csi=np.stack(cols.csi)[order],
        pos=np.ascontiguousarray(pos_all[:, :2], dtype=np.float32),
        los=None,
        snr_db=np.asarray(cols.snr_db, dtype=np.float32)[order] if all(snr_seen) else None,
    )
    steps = np.diff(carriers)
    spacing = float(np.median(steps)) * the_spec.bandwidth_hz / FFT_SIZE
    location = the_spec.locations[array]
    meta = EnvironmentMeta(
        carrier_hz=the_spec.carrier_hz,
        subcarrier_spacing_hz=spacing,
        array=ARRAY_LAYOUT,
        bs_position=location if location is not None else (0.0, 0.0, 0.0),
        description=(
            f"DICHASUS measurement, array {array}, 2x4 sub-array at row {subarray[0]}, "
            f"column {subarray[1]}"
        ),
        source={
            "generator": "csipos.dichasus-import",
            "csipos_version": _version(),
            "dataset": "DICHASUS",
            "files": [Path(f).name for f in files],
            "spec": Path(the_spec.path).name if the_spec.path else None,
            "array": array,
            "subarray": list(subarray),
            "antennas": antenna_list,
            "subcarriers": chosen,
            "fftshift": fftshift,
            "snr_unit": snr_unit,
            "records": len(data),
            "time_range": [float(np.min(cols.time)), float(np.max(cols.time))],
            "bs_position_known": location is not None,
            "position_z_mean": float(pos_all[:, 2].mean()),
        },
    )
    return data, meta


def import_dichasus_to_file(
    files: Sequence[str | Path],
    spec: str | Path | DichasusSpec,
    out: str | Path,
    group: str,
    *,
    overwrite: bool = False,
    **options: Any,
) -> int:
    """`import_dichasus` and write the result as environment `group` of `out`; return M."""
    data, meta = import_dichasus(files, spec, **options)
    write_environment(out, group, data, meta, overwrite=overwrite)
    return len(data)
