"""HDF5 fingerprint files: one environment (one base station's view of a site) per group.

Layout (design.md, "Data"): ``/<env>/csi`` float32 [M,8,103,2], ``/<env>/pos``
float32 [M,2], optional ``/<env>/los`` bool [M] and ``/<env>/snr_db`` float32 [M],
optional ``/<env>/time`` float64 [M] (seconds) and ``/<env>/track`` int32 [M] (trajectory
id) for samples along trajectories (docs/data.md), optional ``/<env>/sample_id`` int64
[M] (which UE measurement a row is: it joins the base stations of a multi-BS site,
`training.data.site`), group attrs from `REQUIRED_GROUP_ATTRS`, root attr
``schema_version``.

Every reader validates before it hands data out and raises `SchemaError` naming
the file, the group and the field, so a bad file fails at the door instead of as
a shape error deep inside training.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import h5py
import numpy as np
import numpy.typing as npt

from training.data.schema import (
    ARRAY_LAYOUT,
    CARRIER_HZ,
    CSI_SHAPE,
    REQUIRED_GROUP_ATTRS,
    SCHEMA_VERSION,
    SUBCARRIER_SPACING_HZ,
    SchemaError,
)

__all__ = [
    "EnvironmentMeta",
    "EnvironmentWriter",
    "Fingerprints",
    "LazyEnvironment",
    "data_fingerprint",
    "list_environments",
    "open_environment",
    "open_for_write",
    "read_environment",
    "write_environment",
]

CHUNK_SAMPLES = 256
"""Samples per HDF5 chunk: ~1.7 MB of CSI, large enough to compress well, small for slices."""

_COMPRESSION = "gzip"
_COMPRESSION_LEVEL = 4
CHUNK_CACHE_BYTES = 256 * 1024 * 1024
"""Default chunk cache of a `LazyEnvironment`: ~150 CSI chunks (~38k samples) stay inflated,
so shuffled batches of an environment of that size decompress each chunk once."""

_MEMORY = "<memory>"
_ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$")
_ARRAY_NAME = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*$")

# field -> (dtype, shape after the sample axis)
_FIELDS: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {
    "csi": (np.dtype(np.float32), CSI_SHAPE),
    "pos": (np.dtype(np.float32), (2,)),
    "los": (np.dtype(np.bool_), ()),
    "snr_db": (np.dtype(np.float32), ()),
    "time": (np.dtype(np.float64), ()),
    "track": (np.dtype(np.int32), ()),
    "sample_id": (np.dtype(np.int64), ()),
}
_OPTIONAL = ("los", "snr_db", "time", "track", "sample_id")


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _check_layout(
    name: str, dtype: np.dtype[Any], shape: tuple[int, ...], path: str, group: str
) -> None:
    """Check dtype and trailing shape of one field (array or HDF5 dataset) against the schema."""
    want_dtype, tail = _FIELDS[name]
    want = "[M, " + ", ".join(str(s) for s in tail) + "]" if tail else "[M]"
    if len(shape) != 1 + len(tail) or tuple(shape[1:]) != tail:
        raise SchemaError(path, group, name, f"shape {_shape_text(shape)}, expected {want}")
    if dtype != want_dtype:
        raise SchemaError(path, group, name, f"dtype {dtype}, expected {want_dtype}")


def _check_finite(name: str, values: npt.NDArray[Any], path: str, group: str) -> None:
    if values.dtype.kind != "f":
        return
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argwhere(bad.reshape(len(values), -1).any(axis=1))[0, 0])
        raise SchemaError(
            path,
            group,
            name,
            f"{int(bad.sum())} NaN/Inf values (first in sample {first}); expected finite numbers",
        )


@dataclass
class Fingerprints:
    """Labelled CSI fingerprints of one environment, in memory.

    `csi` float32 [M,8,103,2] (antenna, subcarrier, real/imag), `pos` float32 [M,2]
    metres in the site's own frame, optional `los` bool [M] and `snr_db` float32 [M];
    samples along trajectories also carry `time` float64 [M] (seconds since the
    recording started) and `track` int32 [M] (which trajectory). `sample_id` int64 [M]
    says which UE measurement a row is: rows of different base stations of one site
    with the same id are the same UE at the same time (`training.data.site`).
    """

    csi: npt.NDArray[np.float32]
    pos: npt.NDArray[np.float32]
    los: npt.NDArray[np.bool_] | None = None
    snr_db: npt.NDArray[np.float32] | None = None
    time: npt.NDArray[np.float64] | None = None
    track: npt.NDArray[np.int32] | None = None
    sample_id: npt.NDArray[np.int64] | None = None

    def arrays(self) -> dict[str, npt.NDArray[Any] | None]:
        """Every schema field by name (None where an optional one is absent)."""
        return {name: getattr(self, name) for name in _FIELDS}

    def __len__(self) -> int:
        return int(self.csi.shape[0])

    def subset(self, idx: npt.ArrayLike | slice) -> Fingerprints:
        """Samples `idx` (slice, int array or bool mask), as a new object (arrays are copies)."""
        key: Any = idx if isinstance(idx, slice) else np.asarray(idx)
        parts: dict[str, Any] = {
            name: None if values is None else np.ascontiguousarray(values[key])
            for name, values in self.arrays().items()
        }
        return Fingerprints(**parts)

    def validate(self, path: str = _MEMORY, group: str = _MEMORY) -> None:
        """Raise `SchemaError` unless shapes, dtypes, lengths and values follow the schema."""
        arrays = self.arrays()
        for name, values in arrays.items():
            if values is None:
                if name in _OPTIONAL:
                    continue
                raise SchemaError(path, group, name, "missing; expected an array")
            if not isinstance(values, np.ndarray):
                raise SchemaError(
                    path, group, name, f"got {type(values).__name__}, expected a numpy array"
                )
            _check_layout(name, values.dtype, values.shape, path, group)
        n = len(self)
        for name, values in arrays.items():
            if values is not None and len(values) != n:
                raise SchemaError(
                    path, group, name, f"{len(values)} samples but csi has {n}; lengths must match"
                )
        for name, values in arrays.items():
            if values is not None:
                _check_finite(name, values, path, group)

    @classmethod
    def concat(cls, parts: Sequence[Fingerprints]) -> Fingerprints:
        """Join parts sample-wise; optional fields survive only if every part has them."""
        if not parts:
            raise ValueError("Fingerprints.concat needs at least one part")
        joined: dict[str, Any] = {}
        for name in _FIELDS:
            values = [p.arrays()[name] for p in parts]
            present = [v for v in values if v is not None]
            joined[name] = np.concatenate(present) if len(present) == len(parts) else None
        return cls(**joined)


@dataclass
class EnvironmentMeta:
    """Group attributes of one environment: radio parameters, BS pose and provenance.

    `source` says where the data came from (generator + version + parameters, or
    the measurement set); it is stored as JSON text and read back as a dict. A
    `source` that is not a JSON object (other tools write plain text) is read back
    as ``{"text": <the attribute>}``.
    """

    carrier_hz: float = CARRIER_HZ
    subcarrier_spacing_hz: float = SUBCARRIER_SPACING_HZ
    array: str = ARRAY_LAYOUT
    bs_position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str = _MEMORY, group: str = _MEMORY) -> None:
        """Raise `SchemaError` if an attribute has the wrong type or an impossible value."""
        for name in ("carrier_hz", "subcarrier_spacing_hz"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise SchemaError(path, group, name, f"{value!r}, expected a positive number (Hz)")
        if not isinstance(self.array, str) or not _ARRAY_NAME.match(self.array):
            raise SchemaError(path, group, "array", f"{self.array!r}, expected e.g. '4x2'")
        bs = tuple(self.bs_position)
        if len(bs) != 3 or not all(isinstance(v, int | float) and math.isfinite(v) for v in bs):
            raise SchemaError(path, group, "bs_position", f"{bs!r}, expected 3 finite floats")
        if not isinstance(self.description, str):
            raise SchemaError(path, group, "description", "expected a string")
        if not isinstance(self.source, dict):
            raise SchemaError(path, group, "source", "expected a dict")
        try:
            json.dumps(self.source, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SchemaError(path, group, "source", f"not JSON-serialisable: {exc}") from exc

    def to_attrs(self) -> dict[str, Any]:
        """The HDF5 attribute values."""
        return {
            "carrier_hz": float(self.carrier_hz),
            "subcarrier_spacing_hz": float(self.subcarrier_spacing_hz),
            "array": self.array,
            "bs_position": np.asarray(self.bs_position, dtype=np.float64),
            "description": self.description,
            "source": json.dumps(self.source, sort_keys=True, allow_nan=False),
        }

    @classmethod
    def from_attrs(cls, attrs: Any, path: str, group: str) -> EnvironmentMeta:
        """Read and validate the group attributes of an open HDF5 group."""
        for name in REQUIRED_GROUP_ATTRS:
            if name not in attrs:
                raise SchemaError(path, group, name, "missing group attribute")

        def text(name: str) -> str:
            value = attrs[name]
            if isinstance(value, bytes):
                return value.decode("utf-8")
            if isinstance(value, str):
                return value
            raise SchemaError(path, group, name, f"{value!r}, expected a string")

        def number(name: str) -> float:
            value = np.asarray(attrs[name])
            if value.shape != () or value.dtype.kind not in "iuf":
                raise SchemaError(path, group, name, f"{value!r}, expected a number")
            return float(value)

        bs = np.asarray(attrs["bs_position"])
        if bs.shape != (3,) or bs.dtype.kind not in "iuf":
            raise SchemaError(path, group, "bs_position", f"{bs!r}, expected 3 floats")
        source = _parse_source(text("source"))
        meta = cls(
            carrier_hz=number("carrier_hz"),
            subcarrier_spacing_hz=number("subcarrier_spacing_hz"),
            array=text("array"),
            bs_position=(float(bs[0]), float(bs[1]), float(bs[2])),
            description=text("description"),
            source=source,
        )
        meta.validate(path, group)
        return meta


def _parse_source(raw: str) -> dict[str, Any]:
    """The `source` attribute as a dict: a JSON object as is, anything else as ``{"text": raw}``.

    csipos writes a JSON object; other tools write a plain string ("recorded at ...").
    Both are provenance worth keeping, so plain text is wrapped instead of refused.
    """
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return {"text": raw}
    return parsed if isinstance(parsed, dict) else {"text": raw}


def _check_env_name(env: str) -> None:
    if not isinstance(env, str) or not _ENV_NAME.match(env):
        raise ValueError(
            f"environment name {env!r} is not valid: expected path segments of letters, "
            "digits, '_', '-', '.' separated by '/', e.g. 'industrial/bs0'"
        )


def _check_root(f: h5py.File, path: str) -> None:
    if "schema_version" not in f.attrs:
        raise SchemaError(path, "/", "schema_version", "missing root attribute")
    raw = np.asarray(f.attrs["schema_version"])
    version = raw.item() if raw.shape == () else raw.tolist()
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    if not isinstance(version, int) or version != SCHEMA_VERSION:
        raise SchemaError(
            path,
            "/",
            "schema_version",
            f"version {version!r} is not supported; this csipos reads version {SCHEMA_VERSION}",
        )


def open_for_write(path: str | Path) -> h5py.File:
    """Open (or create) a file for writing and make sure its schema version is ours."""
    p = Path(path)
    is_new = not p.exists()
    try:
        f = h5py.File(p, "a")
    except OSError as exc:  # h5py's own message names neither the cause nor the way out
        cut = "truncated" in str(exc) or "signature not found" in str(exc)
        hint = (
            "a run killed while creating the file leaves one like this: delete it, or "
            "write to another path"
            if cut
            else "another process may be writing it (wait for it), or it is not ours to "
            "open: write to another path"
        )
        raise SchemaError(
            str(p), "/", "file", f"cannot be opened for writing as HDF5 ({exc}); {hint}"
        ) from exc
    try:
        if is_new or ("schema_version" not in f.attrs and len(f.keys()) == 0):
            f.attrs["schema_version"] = SCHEMA_VERSION
        else:
            _check_root(f, str(p))
    except BaseException:
        f.close()
        raise
    return f


def _get_group(f: h5py.File, env: str, path: str) -> h5py.Group:
    node = f.get(env)
    if isinstance(node, h5py.Group) and node.attrs.get("unlabelled", False):
        raise SchemaError(
            path, env, "(group)", "unlabelled tracks (no positions); pass them as unlabelled data"
        )
    if not isinstance(node, h5py.Group) or "csi" not in node:
        available = ", ".join(_walk_environments(f)) or "none"
        raise SchemaError(
            path, env, "(group)", f"no such environment; environments in this file: {available}"
        )
    return node


def _walk_environments(f: h5py.File) -> list[str]:
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        # Unlabelled tracks (attr `unlabelled`, `training.data.unlabelled`) are not environments.
        if (
            isinstance(obj, h5py.Group)
            and isinstance(obj.get("csi"), h5py.Dataset)
            and not obj.attrs.get("unlabelled", False)
        ):
            found.append(name)

    f.visititems(visit)
    return sorted(found)


def _create_datasets(
    group: h5py.Group, data: Fingerprints, *, resizable: bool
) -> dict[str, h5py.Dataset]:
    out: dict[str, h5py.Dataset] = {}
    arrays = data.arrays()
    n = len(data)
    for name, values in arrays.items():
        if values is None:
            continue
        tail = _FIELDS[name][1]
        rows = max(1, min(CHUNK_SAMPLES, n)) if not resizable else CHUNK_SAMPLES
        out[name] = group.create_dataset(
            name,
            data=values,
            chunks=(rows, *tail),
            maxshape=(None, *tail) if resizable else None,
            compression=_COMPRESSION,
            compression_opts=_COMPRESSION_LEVEL,
            shuffle=True,
        )
    return out


def write_environment(
    path: str | Path,
    env: str,
    data: Fingerprints,
    meta: EnvironmentMeta,
    *,
    overwrite: bool = False,
) -> None:
    """Write one environment as group `env` (may be nested, e.g. ``industrial/bs0``).

    Other groups in the file are kept; an existing `env` is an error unless `overwrite`.
    """
    _check_env_name(env)
    spath = str(path)
    data.validate(spath, env)
    meta.validate(spath, env)
    if len(data) == 0:
        raise SchemaError(spath, env, "csi", "no samples; expected at least one")
    with open_for_write(path) as f:
        if env in f:
            if not overwrite:
                raise FileExistsError(
                    f"{spath}: environment '{env}' already exists; "
                    "pass overwrite=True to replace it"
                )
            del f[env]
        group = f.create_group(env)
        group.attrs.update(meta.to_attrs())
        _create_datasets(group, data, resizable=False)


class EnvironmentWriter:
    """Append fingerprints to one environment in batches, for presets larger than memory.

    Use as a context manager; if the block raises, the partly written group is
    removed so readers never see a half-finished environment.
    """

    def __init__(
        self, path: str | Path, env: str, meta: EnvironmentMeta, *, overwrite: bool = False
    ) -> None:
        _check_env_name(env)
        meta.validate(str(path), env)
        self.path = Path(path)
        self.env = env
        self.meta = meta
        self.overwrite = overwrite
        self._file: h5py.File | None = None
        self._group: h5py.Group | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._count = 0

    def __enter__(self) -> Self:
        f = open_for_write(self.path)
        try:
            if self.env in f:
                if not self.overwrite:
                    raise FileExistsError(
                        f"{self.path}: environment '{self.env}' already exists; "
                        "pass overwrite=True to replace it"
                    )
                del f[self.env]
            self._group = f.create_group(self.env)
            self._group.attrs.update(self.meta.to_attrs())
        except BaseException:
            f.close()
            raise
        self._file = f
        return self

    @property
    def count(self) -> int:
        """Samples written so far."""
        return self._count

    def append(self, data: Fingerprints) -> None:
        """Validate and append one batch; optional fields must be the same in every batch."""
        if self._group is None:
            raise RuntimeError("EnvironmentWriter.append outside its `with` block")
        spath = str(self.path)
        data.validate(spath, self.env)
        if len(data) == 0:
            return
        if not self._datasets:
            self._datasets = _create_datasets(self._group, data, resizable=True)
            self._count = len(data)
            return
        arrays = data.arrays()
        for name in _OPTIONAL:
            if (arrays[name] is None) != (name not in self._datasets):
                state = "has" if name in self._datasets else "lacks"
                raise SchemaError(
                    spath,
                    self.env,
                    name,
                    f"the first batch {state} this field; every batch must match it",
                )
        start, stop = self._count, self._count + len(data)
        for name, dataset in self._datasets.items():
            dataset.resize(stop, axis=0)
            dataset[start:stop] = arrays[name]
        self._count = stop

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        try:
            if exc_type is not None:
                del f[self.env]
            elif self._count == 0:
                del f[self.env]
                raise SchemaError(
                    str(self.path),
                    self.env,
                    "csi",
                    "no samples were appended; expected at least one",
                )
        finally:
            f.close()


def list_environments(path: str | Path) -> list[str]:
    """Names of the groups in `path` that hold an environment (have a `csi` dataset)."""
    spath = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{spath}: no such fingerprint file")
    with h5py.File(path, "r") as f:
        _check_root(f, spath)
        return _walk_environments(f)


def _check_group_layout(group: h5py.Group, path: str, env: str) -> tuple[int, list[str]]:
    """Validate the datasets' presence, dtypes, shapes and lengths; return (M, fields)."""
    names = [n for n in _FIELDS if n in group]
    for name in ("csi", "pos"):
        if name not in group:
            raise SchemaError(path, env, name, "missing dataset")
    n = int(group["csi"].shape[0]) if group["csi"].ndim else 0
    for name in names:
        node = group[name]
        if not isinstance(node, h5py.Dataset):
            raise SchemaError(path, env, name, "expected a dataset, found a group")
        _check_layout(name, node.dtype, tuple(node.shape), path, env)
        if node.shape[0] != n:
            raise SchemaError(
                path, env, name, f"{node.shape[0]} samples but csi has {n}; lengths must match"
            )
    return n, names


def read_environment(path: str | Path, env: str) -> Fingerprints:
    """Load one environment fully into memory, validated (use `open_environment` for big ones)."""
    with open_environment(path, env) as lazy:
        return lazy.read(slice(None))


def read_environment_meta(path: str | Path, env: str) -> EnvironmentMeta:
    """Only the group attributes of one environment."""
    with open_environment(path, env) as lazy:
        return lazy.meta


def open_environment(
    path: str | Path, env: str, *, cache_bytes: int = CHUNK_CACHE_BYTES
) -> LazyEnvironment:
    """Open one environment for lazy, sliced reads; the layout and attrs are checked now.

    `cache_bytes` bounds the inflated chunks kept in memory (random access into a
    compressed file is only fast for the part that fits in this cache).
    """
    return LazyEnvironment(path, env, cache_bytes=cache_bytes)


def _read_by_chunk(dataset: h5py.Dataset, rows: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
    """Read sorted `rows` one chunk-aligned slice at a time.

    h5py's point selection is ~5x slower than slicing whole chunks (measured on
    256-row batches of a 20k-sample file whose chunks sit in the cache).
    """
    step = int(dataset.chunks[0]) if dataset.chunks else CHUNK_SAMPLES
    chunk_of = rows // step
    starts = np.flatnonzero(np.diff(chunk_of, prepend=-1))
    parts = []
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else len(rows)
        lo = int(chunk_of[start]) * step
        block = dataset[lo : lo + step]
        parts.append(block[rows[start:stop] - lo])
    return np.concatenate(parts)


class LazyEnvironment:
    """One environment left on disk: `len`, `meta`, and `read(idx)` of any part of it.

    The file handle opens on first use and reopens after pickling, so the object
    can go to DataLoader worker processes.
    """

    def __init__(self, path: str | Path, env: str, *, cache_bytes: int = CHUNK_CACHE_BYTES) -> None:
        self.path = Path(path)
        self.env = env
        self.cache_bytes = int(cache_bytes)
        spath = str(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{spath}: no such fingerprint file")
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        f = self._handle()
        _check_root(f, spath)
        group = _get_group(f, env, spath)
        self._length, self._fields = _check_group_layout(group, spath, env)
        self.meta = EnvironmentMeta.from_attrs(group.attrs, spath, env)

    def _handle(self) -> h5py.File:
        if self._file is None or not self._file.id.valid:
            self._file = h5py.File(self.path, "r", rdcc_nbytes=self.cache_bytes, rdcc_nslots=10007)
            self._datasets = {}
        return self._file

    def _dataset(self, name: str) -> h5py.Dataset:
        # Keep the dataset objects open: HDF5's chunk cache lives and dies with them.
        f = self._handle()
        if name not in self._datasets:
            self._datasets[name] = f[self.env][name]
        return self._datasets[name]

    def __len__(self) -> int:
        return self._length

    @property
    def has_los(self) -> bool:
        return "los" in self._fields

    @property
    def has_snr(self) -> bool:
        return "snr_db" in self._fields

    @property
    def has_sample_id(self) -> bool:
        return "sample_id" in self._fields

    def read(self, idx: slice | npt.ArrayLike) -> Fingerprints:
        """Read samples `idx` (a slice or an int array; unsorted and repeated ints are fine)."""
        spath = str(self.path)
        if isinstance(idx, slice):
            arrays = {name: self._dataset(name)[idx] for name in self._fields}
        else:
            arrays = self._read_indices(np.asarray(idx))
        data = Fingerprints(
            csi=arrays["csi"],
            pos=arrays["pos"],
            **{name: arrays.get(name) for name in _OPTIONAL},
        )
        data.validate(spath, self.env)
        return data

    def read_field(self, name: str) -> npt.NDArray[Any] | None:
        """One whole field (`pos`, `los`, `time`, ...) without reading the CSI; None if absent."""
        if name not in _FIELDS:
            raise ValueError(f"unknown field {name!r}; expected one of {', '.join(_FIELDS)}")
        if name not in self._fields:
            return None
        values: npt.NDArray[Any] = self._dataset(name)[...]
        _check_finite(name, values, str(self.path), self.env)
        return values

    def _read_indices(self, idx: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise ValueError(
                f"index for {self.path}:{self.env} must be a slice or a 1-D int array, "
                f"got shape {idx.shape} dtype {idx.dtype}"
            )
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self._length):
            raise IndexError(
                f"index out of range for {self.path}:{self.env} with {self._length} samples "
                f"(got {int(idx.min())}..{int(idx.max())})"
            )
        if idx.size == 0:
            return {n: np.empty((0, *_FIELDS[n][1]), dtype=_FIELDS[n][0]) for n in self._fields}
        # h5py wants strictly increasing indices; read each distinct row once, then reorder.
        unique, inverse = np.unique(idx, return_inverse=True)
        lo, hi = int(unique[0]), int(unique[-1]) + 1
        out: dict[str, npt.NDArray[Any]] = {}
        for name in self._fields:
            dataset = self._dataset(name)
            if hi - lo <= 4 * unique.size:
                # Dense request: one contiguous read is far faster than point selection.
                rows = dataset[lo:hi][unique - lo]
            else:
                rows = _read_by_chunk(dataset, unique)
            out[name] = np.ascontiguousarray(rows[inverse])
        return out

    def iter_batches(self, batch_size: int = CHUNK_SAMPLES * 4) -> Iterator[Fingerprints]:
        """All samples in order, `batch_size` at a time (aligned to chunks by default)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, self._length, batch_size):
            yield self.read(slice(start, min(start + batch_size, self._length)))

    def close(self) -> None:
        if self._file is not None and self._file.id.valid:
            self._file.close()
        self._file = None
        self._datasets = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None  # h5py handles do not pickle; reopen in the child
        state["_datasets"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def data_fingerprint(data: Fingerprints | LazyEnvironment) -> str:
    """sha256 (hex) of the arrays, for model manifests: same data -> same hash.

    Each field is hashed on its own and the digests are combined, so a
    `LazyEnvironment` can be hashed in one batched pass and still give the hash of
    its fully loaded `Fingerprints`.
    """
    batches: Iterable[Fingerprints]
    if isinstance(data, LazyEnvironment):
        fields = list(data._fields)
        batches = data.iter_batches()
    else:
        fields = [name for name in _FIELDS if getattr(data, name) is not None]
        batches = [data]
    per_field = {name: hashlib.sha256() for name in fields}
    for batch in batches:
        for name in fields:
            values: npt.NDArray[Any] = getattr(batch, name)
            little = values.astype(values.dtype.newbyteorder("<"), copy=False)
            per_field[name].update(np.ascontiguousarray(little).tobytes())
    header = {"samples": len(data), "schema_version": SCHEMA_VERSION}
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name in fields:
        h.update(f"{name}:{per_field[name].hexdigest()};".encode())
    return h.hexdigest()
