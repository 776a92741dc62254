"""Multi-BS sites: the base stations of one site, joined on the UE measurements they share.

Schema (docs/architecture.md, "Multi-BS sites"): every base station stays an ordinary
environment (its own ``csi``, ``pos``, attrs), so each BS group of a site file is still a
valid single-BS file for every other reader. The base stations of one site are the
environments directly inside one group: ``/<site>/<bs>/csi`` (the simulator writes
``proc/s0007/bs0``), or ``/<bs>/csi`` for a file that holds one site. The BS id is the
last path segment. Each BS group carries ``sample_id`` int64 [M]: rows of different BSs
with the same id are the same UE at the same time, so they must have the same position.
A BS that did not hear a UE simply has no row with its id (the mask is implicit in the
file and explicit in `SiteFingerprints.mask`). Without ``sample_id`` in every group the
rows are joined on their exact float32 position, which must then be unique per BS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from training.data.fingerprints import (
    EnvironmentMeta,
    Fingerprints,
    list_environments,
    read_environment,
    read_environment_meta,
    write_environment,
)
from training.data.schema import SchemaError

__all__ = [
    "BS_ID",
    "POSITION_TOLERANCE_M",
    "BaseStationData",
    "SiteFingerprints",
    "check_bs_id",
    "read_site",
    "site_groups",
    "write_site",
]

BS_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
"""Base-station ids: they name model files and V2 inputs (``csi_<bs>``), so no dots or slashes."""
POSITION_TOLERANCE_M = 1e-3
"""Rows of one sample id at different BSs must agree on the position to this (metres)."""

IntArray = npt.NDArray[np.int64]


def check_bs_id(bs: str, path: str = "<memory>", group: str = "<memory>") -> str:
    if not isinstance(bs, str) or not BS_ID.fullmatch(bs):
        raise SchemaError(
            path, group, "(group name)", f"base-station id {bs!r} must match {BS_ID.pattern}"
        )
    return bs


@dataclass
class BaseStationData:
    """One BS of a site: its fingerprints and, per row, the index of the site sample."""

    rows: IntArray
    data: Fingerprints
    meta: EnvironmentMeta = field(default_factory=EnvironmentMeta)


@dataclass
class SiteFingerprints:
    """Labelled fingerprints of one site seen by several base stations.

    `pos` float32 [N,2] and `sample_id` int64 [N] are the shared UE samples; each
    station's `rows` say which of them it heard (row i of its data is sample rows[i]).
    """

    pos: npt.NDArray[np.float32]
    sample_id: IntArray
    stations: dict[str, BaseStationData]

    def __len__(self) -> int:
        return int(self.pos.shape[0])

    @property
    def bs_ids(self) -> list[str]:
        return list(self.stations)

    @property
    def rows_total(self) -> int:
        """Fingerprints over all base stations."""
        return sum(len(s.data) for s in self.stations.values())

    def mask(self) -> npt.NDArray[np.bool_]:
        """bool [N, n_bs]: which BS heard which sample (columns in `bs_ids` order)."""
        out = np.zeros((len(self), len(self.stations)), dtype=bool)
        for k, station in enumerate(self.stations.values()):
            out[station.rows, k] = True
        return out

    def station(self, bs: str) -> Fingerprints:
        return self.stations[bs].data

    def subset(self, idx: npt.ArrayLike) -> SiteFingerprints:
        """Samples `idx` (int array of sample indices) at every BS, as a new object."""
        chosen = np.asarray(idx, dtype=np.int64)
        order = np.argsort(chosen, kind="stable")
        sorted_idx = chosen[order]
        stations: dict[str, BaseStationData] = {}
        for bs, st in self.stations.items():
            pos_in = np.searchsorted(sorted_idx, st.rows)
            pos_in = np.minimum(pos_in, max(len(sorted_idx) - 1, 0))
            keep = (
                sorted_idx[pos_in] == st.rows
                if len(sorted_idx)
                else np.zeros(len(st.rows), dtype=bool)
            )
            new_rows = order[pos_in[keep]].astype(np.int64)
            stations[bs] = BaseStationData(new_rows, st.data.subset(np.flatnonzero(keep)), st.meta)
        return SiteFingerprints(
            pos=np.ascontiguousarray(self.pos[chosen]),
            sample_id=np.ascontiguousarray(self.sample_id[chosen]),
            stations=stations,
        )

    def only(self, stations: Sequence[str]) -> SiteFingerprints:
        """The same samples as if only ``stations`` had heard them: every other BS keeps
        its place in `bs_ids` and hears none (a site with BSs down)."""
        none = np.zeros(0, dtype=np.int64)
        return SiteFingerprints(
            self.pos,
            self.sample_id,
            {
                bs: st if bs in stations else BaseStationData(none, st.data.subset(none), st.meta)
                for bs, st in self.stations.items()
            },
        )

    def validate(self, path: str = "<memory>", group: str = "<memory>") -> None:
        """Raise `SchemaError` unless every BS is valid and agrees with the shared samples."""
        if not self.stations:
            raise SchemaError(path, group, "(group)", "a site needs at least one base station")
        n = len(self)
        for bs, st in self.stations.items():
            where = f"{group}/{bs}"
            check_bs_id(bs, path, where)
            st.data.validate(path, where)
            if len(st.rows) != len(st.data):
                raise SchemaError(path, where, "rows", "one site sample per fingerprint expected")
            if len(st.rows) and (st.rows.min() < 0 or st.rows.max() >= n):
                raise SchemaError(path, where, "rows", f"sample index outside 0..{n - 1}")
            if len(np.unique(st.rows)) != len(st.rows):
                raise SchemaError(path, where, "sample_id", "an id appears twice in one BS")
            err = np.abs(st.data.pos - self.pos[st.rows]).max(initial=0.0)
            if err > POSITION_TOLERANCE_M:
                raise SchemaError(
                    path,
                    where,
                    "pos",
                    f"differs from the other base stations' position of the same sample by "
                    f"{err:.3g} m (at most {POSITION_TOLERANCE_M} m allowed)",
                )

    @classmethod
    def join(
        cls,
        stations: Mapping[str, Fingerprints],
        metas: Mapping[str, EnvironmentMeta] | None = None,
        *,
        path: str = "<memory>",
        group: str = "<memory>",
    ) -> SiteFingerprints:
        """The site of these per-BS fingerprints, joined on `sample_id` (or exact positions)."""
        if not stations:
            raise SchemaError(path, group, "(group)", "a site needs at least one base station")
        by_id = all(d.sample_id is not None for d in stations.values())
        keys: dict[str, IntArray] = {}
        if by_id:
            for bs, d in stations.items():
                assert d.sample_id is not None
                keys[bs] = d.sample_id.astype(np.int64)
        else:
            # Exact float32 positions as the join key: equal bits, equal UE.
            packed = {bs: _position_key(d.pos) for bs, d in stations.items()}
            every = np.unique(np.concatenate(list(packed.values())))
            for bs, key in packed.items():
                keys[bs] = np.searchsorted(every, key).astype(np.int64)
        for bs, k in keys.items():
            check_bs_id(bs, path, f"{group}/{bs}")
            if len(np.unique(k)) != len(k):
                what = "sample_id" if by_id else "pos"
                hint = "" if by_id else "; add a sample_id dataset to join the base stations"
                raise SchemaError(
                    path, f"{group}/{bs}", what, f"the same {what} appears twice{hint}"
                )
        ids = np.unique(np.concatenate(list(keys.values())))
        pos = np.zeros((len(ids), 2), dtype=np.float32)
        seen = np.zeros(len(ids), dtype=bool)
        built: dict[str, BaseStationData] = {}
        for bs, d in stations.items():
            rows = np.searchsorted(ids, keys[bs]).astype(np.int64)
            fresh = ~seen[rows]
            pos[rows[fresh]] = d.pos[fresh]
            seen[rows] = True
            meta = (metas or {}).get(bs) or EnvironmentMeta()
            built[bs] = BaseStationData(rows, d, meta)
        site = cls(pos=pos, sample_id=ids if by_id else np.arange(len(ids)), stations=built)
        site.validate(path, group)
        return site


def _position_key(pos: npt.NDArray[np.float32]) -> IntArray:
    """One int64 per row from the bits of its float32 (x, y)."""
    bits = np.ascontiguousarray(pos, dtype=np.float32).view(np.uint32).astype(np.int64)
    return (bits[:, 0] << 32) | bits[:, 1]


def _parent(env: str) -> str:
    return env.rpartition("/")[0]


def site_groups(path: str | Path) -> dict[str, list[str]]:
    """Group ('' for the root) -> the environments directly inside it, for every group
    that holds an environment."""
    out: dict[str, list[str]] = {}
    for env in list_environments(path):
        out.setdefault(_parent(env), []).append(env)
    return out


def has_sample_ids(path: str | Path, envs: Sequence[str]) -> bool:
    """Whether every one of `envs` has a `sample_id` dataset."""
    with h5py.File(path, "r") as f:
        return all(isinstance(f[env].get("sample_id"), h5py.Dataset) for env in envs)


def read_site(path: str | Path, group: str | None = None) -> SiteFingerprints:
    """The site whose base stations are the environments directly inside `group`.

    `group` None: the file's only such group. A group holding one environment is a
    one-BS site (so the same reader serves both kinds of file).
    """
    spath = str(path)
    groups = site_groups(path)
    if group is None:
        if len(groups) != 1:
            raise SchemaError(
                spath,
                "/",
                "(group)",
                f"{len(groups)} groups hold environments ({', '.join(g or '/' for g in groups)});"
                " name the site's group",
            )
        group = next(iter(groups))
    group = group.strip("/")
    if group not in groups:
        raise SchemaError(
            spath,
            group or "/",
            "(group)",
            "holds no environments; groups that do: "
            + (", ".join(g or "/" for g in groups) or "none"),
        )
    envs = groups[group]
    stations = {env.rpartition("/")[2]: read_environment(path, env) for env in envs}
    metas = {env.rpartition("/")[2]: read_environment_meta(path, env) for env in envs}
    return SiteFingerprints.join(stations, metas, path=spath, group=group or "/")


def write_site(
    path: str | Path, group: str, site: SiteFingerprints, *, overwrite: bool = False
) -> list[str]:
    """Write each BS of `site` as the environment ``<group>/<bs>`` with its `sample_id`."""
    site.validate(str(path), group)
    written: list[str] = []
    for bs, st in site.stations.items():
        data = st.data.subset(slice(None))
        data.sample_id = site.sample_id[st.rows].astype(np.int64)
        env = f"{group.strip('/')}/{bs}" if group.strip("/") else bs
        write_environment(path, env, data, st.meta, overwrite=overwrite)
        written.append(env)
    return written


def site_summary(site: SiteFingerprints) -> dict[str, Any]:
    """Samples per BS and shared, for logs and manifests."""
    return {
        "samples": len(site),
        "base_stations": {bs: len(st.data) for bs, st in site.stations.items()},
    }
