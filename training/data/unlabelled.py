"""Unlabelled tracks: CSI a site's BS saw along UE trajectories, without positions.

A BS sees UEs move long before anyone labels a position. Consecutive samples of one
UE are close in space, which training uses as a label-free constraint
(`training.unlabelled`). Layout in a fingerprint file (docs/architecture.md, "Data"):
a group with the attribute ``unlabelled = True``, the environment attributes
(`REQUIRED_GROUP_ATTRS`) and

- ``csi`` float32 [M,8,103,2], as in a labelled environment;
- ``time`` float64 [M], seconds (any origin); strictly increasing within a track;
- ``track`` int32 [M], which trajectory (UE recording) a row belongs to;
- no ``pos`` (a ``pos`` there is ignored: training never reads it).

``time`` and ``track`` may both be absent: fingerprints without tracks, the unlabelled
CSI any BS collects. Each such sample is a track of its own (``time`` 0, a new ``track``
id: `UnlabelledTracks.untracked`), so it forms no consecutive pair; training pairs such
samples by their channels instead (`training.unlabelled.found_pairs`).

`list_environments` does not list such groups, so every reader of labelled data and
every existing file behave as before; `list_unlabelled` finds them. A labelled
environment that carries ``time`` and ``track`` can also be read as unlabelled tracks
(`read_unlabelled`): its positions are then dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from training.data.fingerprints import (
    EnvironmentMeta,
    Fingerprints,
    _check_env_name,
    _check_finite,
    _check_layout,
    _check_root,
    open_for_write,
)
from training.data.schema import SchemaError

__all__ = [
    "UNLABELLED_ATTR",
    "UnlabelledTracks",
    "is_unlabelled_group",
    "join_recordings",
    "list_unlabelled",
    "load_site_unlabelled",
    "load_unlabelled",
    "read_unlabelled",
    "recording_of",
    "write_unlabelled",
]

UNLABELLED_ATTR = "unlabelled"
"""Group attribute marking a group of unlabelled tracks (``True``)."""
_MEMORY = "<memory>"
_FIELDS = ("csi", "time", "track")
_EXPECTED = (
    "unlabelled tracks need 'csi' [M,8,103,2] float32, 'time' [M] float64 and 'track' [M] int32 "
    "(or 'csi' alone: fingerprints without tracks)"
)


@dataclass
class UnlabelledTracks:
    """CSI along UE tracks without positions: `csi` [M,8,103,2], `time` [M] s, `track` [M]."""

    csi: npt.NDArray[np.float32]
    time: npt.NDArray[np.float64]
    track: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return int(self.csi.shape[0])

    @classmethod
    def untracked(cls, csi: npt.NDArray[np.float32]) -> UnlabelledTracks:
        """Fingerprints without tracks: each sample a track of its own, at time 0."""
        n = int(np.shape(csi)[0])
        return cls(csi, np.zeros(n, dtype=np.float64), np.arange(n, dtype=np.int32))

    @property
    def tracks(self) -> int:
        """How many distinct tracks."""
        return len(np.unique(self.track))

    def singletons(self) -> npt.NDArray[np.bool_]:
        """[M] whether a row is the only sample of its track (a fingerprint without track)."""
        _, inverse, counts = np.unique(self.track, return_inverse=True, return_counts=True)
        return np.asarray(counts[inverse] == 1)

    def validate(self, path: str = _MEMORY, group: str = _MEMORY) -> None:
        """Raise `SchemaError` unless the arrays follow the layout and time is ordered."""
        for name in _FIELDS:
            values = getattr(self, name)
            if not isinstance(values, np.ndarray):
                raise SchemaError(path, group, name, f"missing; {_EXPECTED}")
            _check_layout(name, values.dtype, values.shape, path, group)
            if len(values) != len(self):
                raise SchemaError(
                    path, group, name, f"{len(values)} samples but csi has {len(self)}"
                )
            _check_finite(name, values, path, group)
        if len(self) == 0:
            raise SchemaError(path, group, "csi", "no samples; expected at least one")
        order = np.argsort(self.track, kind="stable")
        same = self.track[order][1:] == self.track[order][:-1]
        back = same & (np.diff(self.time[order]) <= 0)
        if back.any():
            k = int(np.flatnonzero(back)[0])
            row = int(order[k + 1])
            raise SchemaError(
                path,
                group,
                "time",
                f"track {int(self.track[row])}: time {float(self.time[row])} at sample {row} "
                f"does not follow {float(self.time[order[k]])}; expected strictly increasing "
                "time within each track (rows of a track in time order)",
            )

    @classmethod
    def from_fingerprints(
        cls, data: Fingerprints, path: str = _MEMORY, group: str = _MEMORY
    ) -> UnlabelledTracks:
        """The tracks of labelled samples with `time` and `track`, positions dropped."""
        for name in ("time", "track"):
            if getattr(data, name) is None:
                raise SchemaError(path, group, name, f"missing; {_EXPECTED}")
        assert data.time is not None and data.track is not None
        out = cls(data.csi, data.time, data.track)
        out.validate(path, group)
        return out

    @classmethod
    def concat(cls, parts: Sequence[UnlabelledTracks]) -> UnlabelledTracks:
        """Join recordings; each part's tracks get new ids, so no two parts share a track."""
        if not parts:
            raise ValueError("UnlabelledTracks.concat needs at least one part")
        ids: list[npt.NDArray[np.int32]] = []
        offset = 0
        for p in parts:
            _, inverse = np.unique(p.track, return_inverse=True)
            ids.append((inverse + offset).astype(np.int32))
            offset += int(inverse.max()) + 1 if len(inverse) else 0
        return cls(
            np.concatenate([p.csi for p in parts]),
            np.concatenate([p.time for p in parts]),
            np.concatenate(ids),
        )


def is_unlabelled_group(node: Any) -> bool:
    """Whether an HDF5 node is a group marked as unlabelled tracks."""
    return isinstance(node, h5py.Group) and bool(node.attrs.get(UNLABELLED_ATTR, False))


def list_unlabelled(path: str | Path) -> list[str]:
    """Names of the groups in `path` marked as unlabelled tracks (sorted)."""
    spath = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{spath}: no such fingerprint file")
    found: list[str] = []
    with h5py.File(path, "r") as f:
        _check_root(f, spath)

        def visit(name: str, obj: Any) -> None:
            if is_unlabelled_group(obj):
                found.append(name)

        f.visititems(visit)
    return sorted(found)


@contextlib.contextmanager
def _group(path: str | Path, name: str) -> Iterator[h5py.Group]:
    """Group ``name`` of a fingerprint file, open for reading."""
    spath = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{spath}: no such fingerprint file")
    with h5py.File(path, "r") as f:
        _check_root(f, spath)
        group = f.get(name)
        if not isinstance(group, h5py.Group):
            raise SchemaError(spath, name, "(group)", "no such group")
        yield group


def read_unlabelled(path: str | Path, env: str) -> UnlabelledTracks:
    """Group `env` of `path` as unlabelled tracks, validated.

    `env` may be an unlabelled group or a labelled environment (its positions are not
    read); without `time` and `track` its samples are fingerprints without tracks
    (`UnlabelledTracks.untracked`).
    """
    spath = str(path)
    with _group(path, env) as group:
        arrays: dict[str, npt.NDArray[Any]] = {}
        n: int | None = None
        untracked = "time" not in group and "track" not in group and "csi" in group
        for name in _FIELDS[:1] if untracked else _FIELDS:
            node = group.get(name)
            if not isinstance(node, h5py.Dataset):
                raise SchemaError(spath, env, name, f"missing dataset; {_EXPECTED}")
            _check_layout(name, node.dtype, tuple(node.shape), spath, env)
            if n is not None and node.shape[0] != n:
                raise SchemaError(
                    spath, env, name, f"{node.shape[0]} samples but csi has {n}; lengths must match"
                )
            n = int(node.shape[0])
        for name in _FIELDS[:1] if untracked else _FIELDS:
            arrays[name] = np.asarray(group[name][()])
        EnvironmentMeta.from_attrs(group.attrs, spath, env).validate(spath, env)
    if untracked:
        tracks = UnlabelledTracks.untracked(arrays["csi"])
    else:
        tracks = UnlabelledTracks(arrays["csi"], arrays["time"], arrays["track"])
    tracks.validate(spath, env)
    return tracks


def load_unlabelled(path: str | Path, env: str | None = None) -> UnlabelledTracks:
    """Group `env` as tracks (`read_unlabelled`), or, without `env`, every unlabelled group of
    `path` joined (`UnlabelledTracks.concat`); a file with none is a `SchemaError`."""
    if env is not None:
        return read_unlabelled(path, env)
    names = list_unlabelled(path)
    if not names:
        raise SchemaError(
            str(path),
            "/",
            "(group)",
            f"no unlabelled tracks (a group with attribute {UNLABELLED_ATTR}=True and "
            "csi, time, track, or csi alone); name a group of CSI with --unlabelled-env",
        )
    return UnlabelledTracks.concat([read_unlabelled(path, n) for n in names])


def load_site_unlabelled(
    path: str | Path, bs_ids: Sequence[str], group: str | None = None
) -> dict[str, UnlabelledTracks]:
    """A multi-BS site's unlabelled tracks per BS id: the groups named by the BS's id (the
    last part of the name, as in a labelled multi-BS upload). With `group`, its direct
    children (unlabelled groups, or labelled environments with `time` and `track`: a
    recorded walk's positions are dropped); without, every unlabelled group of the file,
    one BS's groups joined. A name that is not one of `bs_ids`, or no tracks at all, is a
    `SchemaError` (tracks for another site's BS would train the wrong model)."""
    spath = str(path)
    if group is None:
        names = list_unlabelled(path)
    else:
        with _group(path, group) as node:
            names = sorted(
                f"{group.rstrip('/')}/{k}" for k, v in node.items() if isinstance(v, h5py.Group)
            )
    parts: list[tuple[str, str, UnlabelledTracks]] = []
    for name in names:
        _, _, bs = name.rpartition("/")
        if bs not in bs_ids:
            raise SchemaError(
                spath,
                name,
                "(group)",
                f"unlabelled tracks for {bs!r}, which is not one of the site's base stations; "
                f"expected groups named {sorted(bs_ids)}",
            )
        parts.append((recording_of(path, name), bs, read_unlabelled(path, name)))
    if not parts:
        raise SchemaError(
            spath,
            group or "/",
            "(group)",
            "no unlabelled tracks; expected groups named by base station id "
            f"({sorted(bs_ids)}) with csi, time and track (or csi alone)",
        )
    return join_recordings(parts)


def recording_of(path: str | Path, name: str) -> str:
    """The recording a BS's group belongs to, for `join_recordings`: its parent (``day0``
    of ``day0/bs0``), whose BSs share track ids; a group without ``time`` and ``track``
    (fingerprints without tracks) is a recording of its own, since its row k and another
    BS's row k are not the same UE at the same instant."""
    with _group(path, name) as group:
        untracked = "time" not in group and "track" not in group
    return name if untracked else name.rpartition("/")[0]


def join_recordings(
    parts: Sequence[tuple[str, str, UnlabelledTracks]],
) -> dict[str, UnlabelledTracks]:
    """Per BS, its recordings joined (``(recording, bs, tracks)``, e.g. the groups
    ``day0/bs0``, ``day0/bs1``, ``day1/bs0``): one new track id per (recording, track)
    *shared by every BS*, so the same UE at the same time keeps one (track, time) key at
    each BS that saw it (the joint head pairs its BSs' views by it, `training.multibs`),
    while tracks of different recordings never join."""
    ids: dict[tuple[str, int], int] = {}
    by_bs: dict[str, list[UnlabelledTracks]] = {}
    for recording, bs, t in parts:
        tracks, inverse = np.unique(t.track, return_inverse=True)
        new = [ids.setdefault((recording, int(k)), len(ids)) for k in tracks.tolist()]
        track = np.asarray(new, dtype=np.int32)[inverse]
        by_bs.setdefault(bs, []).append(UnlabelledTracks(t.csi, t.time, track))
    return {
        bs: UnlabelledTracks(
            np.concatenate([p.csi for p in got]),
            np.concatenate([p.time for p in got]),
            np.concatenate([p.track for p in got]).astype(np.int32),
        )
        for bs, got in sorted(by_bs.items())
    }


def instants(tracks: Mapping[str, UnlabelledTracks]) -> dict[tuple[int, float], dict[str, int]]:
    """Each instant (track id, time) any BS saw: per BS that saw it, its row there (the
    key `join_recordings` keeps shared between a recording's BSs)."""
    where: dict[tuple[int, float], dict[str, int]] = {}
    for bs, t in tracks.items():
        for i, key in enumerate(zip(t.track.tolist(), t.time.tolist(), strict=True)):
            where.setdefault(key, {})[bs] = i
    return where


def write_unlabelled(
    path: str | Path,
    env: str,
    tracks: UnlabelledTracks,
    meta: EnvironmentMeta,
    *,
    overwrite: bool = False,
) -> None:
    """Write `tracks` as the unlabelled group `env` (other groups are kept)."""
    _check_env_name(env)
    spath = str(path)
    tracks.validate(spath, env)
    meta.validate(spath, env)
    with open_for_write(path) as f:
        if env in f:
            if not overwrite:
                raise FileExistsError(f"{spath}: group '{env}' already exists")
            del f[env]
        group = f.create_group(env)
        group.attrs.update(meta.to_attrs())
        group.attrs[UNLABELLED_ATTR] = True
        n = len(tracks)
        for name in _FIELDS:
            values = getattr(tracks, name)
            group.create_dataset(
                name,
                data=values,
                chunks=(max(1, min(256, n)), *values.shape[1:]),
                compression="gzip",
                compression_opts=4,
                shuffle=True,
            )
