"""Seeded procedural scenes: the rooms, floors and halls users meet, as plain `SceneSpec`s.

Scene ``k`` of a preset is a pure function of ``(k, preset)``: the same number always
gives the same room, so a corpus is a range of numbers and held-out targets are
another range (e.g. sources 0..127, targets 100000..100007) that no source shares.
Families take turns (``k mod len(families)``), so every range is balanced.
Geometry and the measurement chain come from independent streams, so switching the
chain randomisation off leaves every room, obstacle and BS where it was.

Families (`FAMILIES`): office, corridor, lab, l-shaped, multi-room, warehouse,
factory. Each draws a size, ITU materials for walls, floor and ceiling, 0..N
obstacles of the kinds it has (shelves, cabinets, machines, pillars, partitions,
desks, person-sized blockers; random size, place, material and yaw), 1..4 base
stations on walls, in corners or on the ceiling (height, azimuth, downtilt), and
the UE area (one or several polygons; positions are never sampled inside an
obstacle) with a height jitter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from training.sim.chain import ChainRandomisation, RadioChain, nominal_chain, sample_chain
from training.sim.raytrace import SolverConfig
from training.sim.scene import BaseStation, Cuboid, SceneSpec, UEArea, Vec2, Vec3

FAMILIES = ("office", "corridor", "lab", "l-shaped", "multi-room", "warehouse", "factory")
GROUP_PREFIX = "proc"
_STREAM_TAG = 0x5CE9E  # keeps procedural streams apart from every other use of the seed


@dataclass(frozen=True)
class ProceduralPreset:
    """What a procedural corpus looks like: which families, how large, how many positions."""

    name: str
    families: tuple[str, ...]
    max_side_m: float
    """Room sides are clipped to this (the `tiny` preset keeps CI scenes small)."""
    max_obstacles: int
    max_base_stations: int
    positions: int
    """UE positions per scene, shared by all its base stations."""
    solver: SolverConfig = field(default_factory=SolverConfig)
    chain: ChainRandomisation = field(default_factory=ChainRandomisation)
    refraction_families: tuple[str, ...] = ("multi-room",)
    """Traced with refraction on: without it inner walls are opaque and a BS reaches the
    other rooms only through the doors (9 % of a multi-room floor's positions got no
    path at all at depth 3; with it none, at no measurable extra time)."""
    min_base_stations: int = 1
    """At least this many BSs per scene (`with_min_base_stations`: multi-BS targets). With
    the default 1 the scenes are the same as before the field existed."""

    def with_min_base_stations(self, n: int) -> ProceduralPreset:
        """This preset with at least `n` base stations per scene (raising the maximum to it)."""
        return replace(self, min_base_stations=n, max_base_stations=max(n, self.max_base_stations))

    def solver_for(self, spec: SceneSpec) -> SolverConfig:
        """The solver settings for one of this preset's scenes."""
        if spec.extra.get("family") in self.refraction_families:
            return replace(self.solver, refraction=True)
        return self.solver

    def __post_init__(self) -> None:
        unknown = sorted(set(self.families) - set(FAMILIES))
        if not self.families or unknown:
            raise ValueError(f"families: expected some of {FAMILIES}, got {self.families}")
        if not 4.0 <= self.max_side_m <= 100.0:
            raise ValueError(f"max_side_m: expected 4..100 m, got {self.max_side_m}")
        if not 1 <= self.max_base_stations <= 4:
            raise ValueError(f"max_base_stations: expected 1..4, got {self.max_base_stations}")
        if not 1 <= self.min_base_stations <= self.max_base_stations:
            raise ValueError(
                f"min_base_stations: expected 1..{self.max_base_stations}, "
                f"got {self.min_base_stations}"
            )
        if self.max_obstacles < 0 or self.positions < 1:
            raise ValueError("max_obstacles must be >= 0 and positions >= 1")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.min_base_stations == 1:
            del out["min_base_stations"]  # runs recorded before the field stay resumable
        return out


PROCEDURAL_PRESETS: dict[str, ProceduralPreset] = {
    # CI: small rooms, few obstacles, few positions; depth 2 and 3e4 rays (same CSI as
    # 1e5 rays to -80 dB in the measurements of docs/data.md) keep a scene at seconds.
    "tiny": ProceduralPreset(
        "tiny",
        families=("office", "l-shaped", "lab"),
        max_side_m=8.0,
        max_obstacles=4,
        max_base_stations=2,
        positions=40,
        solver=SolverConfig(max_depth=2, samples_per_src=30_000),
    ),
    # A quick look at every family before a full corpus (also the cost figure in docs/data.md).
    "pilot": ProceduralPreset(
        "pilot",
        families=FAMILIES,
        max_side_m=50.0,
        max_obstacles=30,
        max_base_stations=4,
        positions=500,
    ),
    # The MEML source corpus: ~128 scenes x 1,500 positions, every family.
    "corpus": ProceduralPreset(
        "corpus",
        families=FAMILIES,
        max_side_m=50.0,
        max_obstacles=40,
        max_base_stations=4,
        positions=1500,
    ),
}


def get_procedural_preset(name: str) -> ProceduralPreset:
    """A procedural preset by name, with an error listing the known ones."""
    try:
        return PROCEDURAL_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown procedural preset {name!r}: expected one of {sorted(PROCEDURAL_PRESETS)}"
        ) from None


def scene_name(index: int) -> str:
    """``s0007``: the scene's name; its environments are ``proc/s0007/bs0`` ..."""
    return f"s{index:04d}"


def _streams(index: int) -> tuple[np.random.Generator, np.random.Generator]:
    if index < 0:
        raise ValueError(f"scene index: expected >= 0, got {index}")
    root = np.random.SeedSequence(entropy=index, spawn_key=(_STREAM_TAG,))
    geometry, chain = root.spawn(2)
    return np.random.Generator(np.random.PCG64(geometry)), np.random.Generator(
        np.random.PCG64(chain)
    )


def procedural_scene(index: int, preset: str | ProceduralPreset = "corpus") -> SceneSpec:
    """Scene number `index` of `preset` (a pure function of both)."""
    chosen = get_procedural_preset(preset) if isinstance(preset, str) else preset
    rng, _ = _streams(index)
    # Families take turns, so any run of len(families) consecutive scenes has each once.
    family = chosen.families[index % len(chosen.families)]
    for _attempt in range(50):
        spec = _Builder(rng, chosen, family, index).build()
        if spec is not None:
            return spec
    raise RuntimeError(f"procedural scene {index}: no valid {family} layout in 50 attempts")


def procedural_chains(
    index: int, spec: SceneSpec, preset: str | ProceduralPreset = "corpus", *, randomise: bool
) -> list[RadioChain]:
    """One chain per base station of scene `index`: randomised, or all nominal."""
    chosen = get_procedural_preset(preset) if isinstance(preset, str) else preset
    if not randomise:
        return [nominal_chain() for _ in spec.base_stations]
    _, rng = _streams(index)
    return [sample_chain(rng, chosen.chain) for _ in spec.base_stations]


# --- geometry helpers --------------------------------------------------------------------------


def _r(v: float, nd: int = 3) -> float:
    return round(float(v), nd)


def _overlap(a: list[Vec2], b: list[Vec2]) -> bool:
    """Separating-axis test of two convex polygons (corners in order)."""
    for poly in (a, b):
        for i in range(len(poly)):
            (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % len(poly)]
            nx, ny = y0 - y1, x1 - x0
            pa = [nx * x + ny * y for x, y in a]
            pb = [nx * x + ny * y for x, y in b]
            if max(pa) < min(pb) or max(pb) < min(pa):
                return False
    return True


def _grown(ob: Cuboid, gap: float) -> list[Vec2]:
    g = Cuboid(
        ob.name,
        (ob.min[0] - gap, ob.min[1] - gap, ob.min[2]),
        (ob.max[0] + gap, ob.max[1] + gap, ob.max[2]),
        ob.material,
        ob.yaw_deg,
    )
    return g.footprint()


# obstacle kinds: (size ranges w, d, h in metres (h None: full height), materials, yaw mode)
_KINDS: dict[str, tuple[Vec2, Vec2, Vec2 | None, tuple[str, ...], str]] = {
    "desk": (
        (1.2, 1.8),
        (0.6, 0.9),
        (0.72, 0.78),
        ("wood", "chipboard", "plywood", "metal"),
        "any",
    ),
    "cabinet": ((0.4, 1.2), (0.4, 0.6), (1.0, 2.2), ("metal", "wood", "chipboard"), "wall"),
    "shelf": ((2.0, 8.0), (0.6, 1.2), (2.0, 8.0), ("metal", "wood"), "aligned"),
    "machine": ((1.0, 4.0), (1.0, 3.0), (1.0, 3.5), ("metal",), "any"),
    "pillar": ((0.3, 0.8), (0.3, 0.8), None, ("concrete", "metal", "brick"), "aligned"),
    "partition": (
        (1.0, 4.0),
        (0.05, 0.1),
        (1.2, 2.2),
        ("glass", "plasterboard", "metal", "wood"),
        "any",
    ),
    # No ITU material models tissue; marble (eps_r ~7) stands in for a lossy, reflective body.
    "person": ((0.4, 0.55), (0.25, 0.35), (1.6, 1.9), ("marble",), "any"),
}

# family -> size ranges (x, y, z) in metres, wall/floor/ceiling materials, obstacle kinds with
# their weights, and at most how many obstacles per 10 m^2 of floor ("density")
_FAMILY: dict[str, dict[str, Any]] = {
    "office": {
        "size": ((4.0, 12.0), (3.5, 10.0), (2.6, 3.2)),
        "wall": ("plasterboard", "brick", "concrete", "glass", "wood"),
        "floor": ("concrete", "wood", "marble"),
        "ceiling": ("ceiling_board", "concrete", "plasterboard"),
        "kinds": {"desk": 4, "cabinet": 2, "partition": 1, "person": 2, "pillar": 0.5},
        "density": 1.2,
    },
    "corridor": {
        "size": ((10.0, 50.0), (1.8, 3.5), (2.5, 3.5)),
        "wall": ("plasterboard", "concrete", "brick", "glass"),
        "floor": ("concrete", "marble"),
        "ceiling": ("ceiling_board", "concrete"),
        "kinds": {"cabinet": 1, "person": 3, "pillar": 1},
        "density": 0.4,
    },
    "lab": {
        "size": ((6.0, 16.0), (5.0, 12.0), (2.8, 4.0)),
        "wall": ("plasterboard", "brick", "concrete"),
        "floor": ("concrete", "chipboard"),
        "ceiling": ("ceiling_board", "concrete", "metal"),
        "kinds": {"desk": 3, "cabinet": 2, "machine": 1, "partition": 1, "person": 1},
        "density": 1.0,
    },
    "l-shaped": {
        "size": ((8.0, 25.0), (6.0, 20.0), (2.7, 3.5)),
        "wall": ("plasterboard", "brick", "concrete", "glass"),
        "floor": ("concrete", "wood", "marble"),
        "ceiling": ("ceiling_board", "concrete"),
        "kinds": {"desk": 3, "cabinet": 2, "partition": 1, "person": 2, "pillar": 1},
        "density": 0.8,
    },
    "multi-room": {
        "size": ((10.0, 30.0), (8.0, 20.0), (2.7, 3.5)),
        "wall": ("plasterboard", "brick", "concrete"),
        "floor": ("concrete", "wood"),
        "ceiling": ("ceiling_board", "concrete"),
        "kinds": {"desk": 3, "cabinet": 2, "person": 2},
        "density": 0.6,
    },
    "warehouse": {
        "size": ((20.0, 50.0), (15.0, 40.0), (6.0, 12.0)),
        "wall": ("concrete", "metal", "brick"),
        "floor": ("concrete",),
        "ceiling": ("metal", "concrete"),
        "kinds": {"pillar": 2, "person": 2, "machine": 1, "cabinet": 1},
        "density": 0.1,
    },
    "factory": {
        "size": ((15.0, 50.0), (12.0, 35.0), (5.0, 10.0)),
        "wall": ("concrete", "metal", "brick"),
        "floor": ("concrete",),
        "ceiling": ("metal", "concrete"),
        "kinds": {"machine": 4, "shelf": 1, "pillar": 1, "partition": 1, "person": 2},
        "density": 0.25,
    },
}


class _Builder:
    """One attempt at a scene of one family; `build()` returns None if it came out unusable."""

    def __init__(
        self, rng: np.random.Generator, preset: ProceduralPreset, family: str, index: int
    ) -> None:
        self.rng = rng
        self.preset = preset
        self.family = family
        self.index = index
        self.cfg = _FAMILY[family]
        self.obstacles: list[Cuboid] = []
        self.ue_polygons: list[tuple[Vec2, ...]] = []
        self.size: Vec3 = (0.0, 0.0, 0.0)
        self.wall = ""
        self.mounts: dict[str, str] = {}

    # small draws
    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return str(options[int(self.rng.integers(len(options)))])

    def build(self) -> SceneSpec | None:
        cap = self.preset.max_side_m
        (xr, yr, zr) = self.cfg["size"]
        sx = _r(self.u(min(xr[0], cap), min(xr[1], cap)), 2)
        sy = _r(self.u(min(yr[0], cap), min(yr[1], cap)), 2)
        if self.rng.uniform() < 0.5:
            sx, sy = sy, sx
        sz = _r(self.u(*zr), 2)
        self.size = (sx, sy, sz)
        wall = self.wall = self.pick(self.cfg["wall"])
        structure: Callable[[], None] = {
            "l-shaped": self._l_shape,
            "multi-room": self._rooms,
            "warehouse": self._shelf_rows,
        }.get(self.family, self._whole_floor)
        structure()
        self._furnish()
        stations = self._base_stations()
        if stations is None:
            return None
        clearance = 0.2
        xs = [p[0] for poly in self.ue_polygons for p in poly]
        ys = [p[1] for poly in self.ue_polygons for p in poly]
        area = UEArea(
            x=(min(xs), max(xs)),
            y=(min(ys), max(ys)),
            height=_r(self.u(0.8, 1.5), 2),
            polygons=tuple(self.ue_polygons),
            height_jitter=_r(self.u(0.0, 0.3), 3),
        )
        name = scene_name(self.index)
        kinds: dict[str, int] = {}
        for ob in self.obstacles:
            kinds[ob.kind] = kinds.get(ob.kind, 0) + 1
        spec = SceneSpec(
            name=name,
            group=f"{GROUP_PREFIX}/{name}",
            size=self.size,
            ue_area=area,
            base_stations=tuple(stations),
            obstacles=tuple(self.obstacles),
            wall_material=wall,
            wall_thickness=_r(self.u(0.1, 0.3), 3),
            floor_material=self.pick(self.cfg["floor"]),
            ceiling_material=self.pick(self.cfg["ceiling"]),
            ceiling_thickness=_r(self.u(0.05, 0.3), 3),
            clearance=clearance,
            description=f"procedural {self.family} {sx:g}x{sy:g}x{sz:g} m, "
            f"{len(self.obstacles)} obstacles "
            f"({', '.join(f'{v} {k}' for k, v in sorted(kinds.items())) or 'none'}), "
            f"{len(stations)} BS.",
            extra={
                "generator": "csipos.training.sim.procedural",
                "family": self.family,
                "index": self.index,
                "preset": self.preset.name,
                "mounts": [self.mounts[bs.name] for bs in stations],
            },
        )
        return spec if self._free_share(spec) >= 0.3 else None

    # --- structure: walls inside the room and the UE polygons -------------------------------

    def _whole_floor(self) -> None:
        sx, sy, _ = self.size
        if self.rng.uniform() < 0.3:  # labelled positions cover only part of the floor
            w, d = self.u(0.5, 1.0) * sx, self.u(0.5, 1.0) * sy
            x0, y0 = self.u(0, sx - w), self.u(0, sy - d)
            self.ue_polygons.append(_rect(x0, y0, x0 + w, y0 + d))
        else:
            self.ue_polygons.append(_rect(0, 0, sx, sy))

    def _l_shape(self) -> None:
        """A full-height block of wall material fills one corner: the floor is an L."""
        sx, sy, sz = self.size
        nx, ny = _r(self.u(0.3, 0.6) * sx, 2), _r(self.u(0.3, 0.6) * sy, 2)
        right, top = self.rng.uniform() < 0.5, self.rng.uniform() < 0.5
        x0, x1 = (_r(sx - nx), sx) if right else (0.0, nx)
        y0, y1 = (_r(sy - ny), sy) if top else (0.0, ny)
        self.obstacles.append(Cuboid("notch", (x0, y0, 0.0), (x1, y1, sz), self.wall, kind="wall"))
        inner = (x0 if right else x1, y0 if top else y1)
        notch = (sx if right else 0.0, sy if top else 0.0)
        corners: list[Vec2] = [(0.0, 0.0), (sx, 0.0), (sx, sy), (0.0, sy)]
        poly: list[Vec2] = []
        for i, c in enumerate(corners):
            if c != notch:
                poly.append(c)
                continue
            prev, nxt = corners[i - 1], corners[(i + 1) % 4]
            # where the notch meets the edge arriving at c, the inner corner, the edge leaving c
            poly.append((inner[0], c[1]) if prev[1] == c[1] else (c[0], inner[1]))
            poly.append(inner)
            poly.append((inner[0], c[1]) if nxt[1] == c[1] else (c[0], inner[1]))
        self.ue_polygons.append(tuple((_r(x), _r(y)) for x, y in poly))

    def _rooms(self) -> None:
        """2-4 rooms side by side along the long side, each wall with a door gap."""
        sx, sy, sz = self.size
        along_x = sx >= sy
        length, depth = (sx, sy) if along_x else (sy, sx)
        n = int(self.rng.integers(2, 5))
        cuts = sorted(self.u(0.15, 0.85) * length for _ in range(n - 1))
        if any(b - a < 2.5 for a, b in zip([0.0, *cuts], [*cuts, length], strict=True)):
            cuts = [length * (i + 1) / n for i in range(n - 1)]
        thick = _r(self.u(0.1, 0.2), 3)
        material = self.pick(("plasterboard", "brick", "concrete", "glass"))
        for i, c in enumerate(cuts):
            door = self.u(0.9, min(2.0, depth / 3))
            at = self.u(0.3, depth - door - 0.3)
            for j, (a, b) in enumerate(((0.0, at), (at + door, depth))):
                lo = (c - thick / 2, a, 0.0) if along_x else (a, c - thick / 2, 0.0)
                hi = (c + thick / 2, b, sz) if along_x else (b, c + thick / 2, sz)
                self.obstacles.append(
                    Cuboid(
                        f"wall{i}{'ab'[j]}",
                        tuple(_r(v) for v in lo),  # type: ignore[arg-type]
                        tuple(_r(v) for v in hi),  # type: ignore[arg-type]
                        material,
                        kind="wall",
                    )
                )
        bounds = [0.0, *cuts, length]
        rooms = list(range(n))
        chosen = [r for r in rooms if self.rng.uniform() < 0.7] or [int(self.rng.integers(n))]
        for r in chosen:
            a, b = bounds[r], bounds[r + 1]
            self.ue_polygons.append(_rect(a, 0, b, depth) if along_x else _rect(0, a, depth, b))

    def _shelf_rows(self) -> None:
        """Warehouse: rows of tall racks with aisles, split by one or two cross aisles."""
        sx, sy, sz = self.size
        along_x = self.rng.uniform() < 0.5
        length, width = (sx, sy) if along_x else (sy, sx)
        depth = self.u(0.8, 1.2)
        aisle = self.u(2.0, 4.0)
        height = min(self.u(3.0, 8.0), sz - 0.8)
        material = self.pick(("metal", "metal", "wood"))
        margin = self.u(1.5, 3.0)
        gaps = int(self.rng.integers(1, 3))
        seg_len = (length - 2 * margin - gaps * aisle) / (gaps + 1)
        pos, row = margin, 0
        while pos + depth <= width - margin and seg_len > 2.0:
            start = margin
            for g in range(gaps + 1):
                lo = (start, pos) if along_x else (pos, start)
                hi = (start + seg_len, pos + depth) if along_x else (pos + depth, start + seg_len)
                self.obstacles.append(
                    Cuboid(
                        f"rack{row}-{g}",
                        (_r(lo[0]), _r(lo[1]), 0.0),
                        (_r(hi[0]), _r(hi[1]), _r(height)),
                        material,
                        kind="shelf",
                    )
                )
                start += seg_len + aisle
            pos += depth + aisle
            row += 1
        self.ue_polygons.append(_rect(0, 0, sx, sy))

    # --- furniture, machines, people ---------------------------------------------------------

    def _furnish(self) -> None:
        sx, sy, _ = self.size
        weights: dict[str, float] = self.cfg["kinds"]
        kinds, w = list(weights), np.asarray(list(weights.values()), dtype=np.float64)
        most = min(self.preset.max_obstacles, int(self.cfg["density"] * sx * sy / 10) + 1)
        # Rooms may be empty; halls are never bare (a third of their maximum at least).
        least = most // 3 if self.family in ("warehouse", "factory") else 0
        n = int(self.rng.integers(least, most + 1))
        for i in range(n):
            kind = kinds[int(self.rng.choice(len(kinds), p=w / w.sum()))]
            ob = self._place(kind, f"{kind}{i}")
            if ob is not None:
                self.obstacles.append(ob)

    def _place(self, kind: str, name: str) -> Cuboid | None:
        sx, sy, sz = self.size
        wr, dr, hr, materials, yaw_mode = _KINDS[kind]
        w, d = self.u(*wr), self.u(*dr)
        w, d = min(w, 0.4 * max(sx, sy)), min(d, 0.4 * min(sx, sy))
        h = sz if hr is None else min(self.u(*hr), sz - 0.3)
        material = self.pick(materials)
        if yaw_mode == "any":
            yaw = self.u(0.0, 180.0)
        elif yaw_mode == "wall":  # against a wall, roughly square to it
            yaw = float(self.pick(("0", "90"))) + self.u(-5.0, 5.0)
        else:  # racks and pillars line up with the building
            yaw = 0.0
            if self.rng.uniform() < 0.5:
                w, d = d, w
        gap = 0.15 if kind == "person" else 0.4
        for _ in range(30):
            cx, cy = self.u(0.0, sx), self.u(0.0, sy)
            ob = Cuboid(
                name,
                (_r(cx - w / 2), _r(cy - d / 2), 0.0),
                (_r(cx + w / 2), _r(cy + d / 2), _r(h)),
                material,
                yaw_deg=_r(yaw, 1),
                kind=kind,
            )
            corners = ob.footprint()
            if not all(0.05 <= x <= sx - 0.05 and 0.05 <= y <= sy - 0.05 for x, y in corners):
                continue
            if any(_overlap(_grown(ob, gap), other.footprint()) for other in self.obstacles):
                continue
            return ob
        return None

    # --- base stations -----------------------------------------------------------------------

    def _base_stations(self) -> list[BaseStation] | None:
        n = int(self.rng.integers(self.preset.min_base_stations, self.preset.max_base_stations + 1))
        stations: list[BaseStation] = []
        for _ in range(60):
            if len(stations) == n:
                break
            bs = self._one_bs(f"bs{len(stations)}")
            if bs is None:
                continue
            if any(math.dist(bs.position, o.position) < 1.0 for o in stations):
                continue
            stations.append(bs)
        if len(stations) < self.preset.min_base_stations:
            return None
        return stations or None

    def _one_bs(self, name: str) -> BaseStation | None:
        sx, sy, sz = self.size
        mount = self.pick(("wall", "wall", "corner", "ceiling", "ceiling"))
        inset = 0.15
        if mount == "ceiling":
            x, y, z = self.u(0.5, sx - 0.5), self.u(0.5, sy - 0.5), sz - self.u(0.1, 0.3)
            azimuth, tilt = self.u(0.0, 360.0), self.u(60.0, 89.0)
        elif mount == "corner":
            cx, cy = self.pick(("0", "1")) == "1", self.pick(("0", "1")) == "1"
            x = sx - inset if cx else inset
            y = sy - inset if cy else inset
            z = self.u(min(2.0, sz - 0.4), sz - 0.2)
            inward = math.degrees(math.atan2(-1.0 if cy else 1.0, -1.0 if cx else 1.0))
            azimuth, tilt = inward + self.u(-20.0, 20.0), self.u(5.0, 45.0)
        else:
            side = int(self.rng.integers(4))  # south, east, north, west
            t = self.u(0.1, 0.9)
            x, y, inward = [
                (t * sx, inset, 90.0),
                (sx - inset, t * sy, 180.0),
                (t * sx, sy - inset, 270.0),
                (inset, t * sy, 0.0),
            ][side]
            z = self.u(min(2.0, sz - 0.4), sz - 0.2)
            azimuth, tilt = inward + self.u(-45.0, 45.0), self.u(0.0, 40.0)
        pos = (_r(x), _r(y), _r(z))
        if any(ob.contains(*pos, margin=0.3) for ob in self.obstacles):
            return None
        a, t = math.radians(azimuth), math.radians(tilt)
        look = (
            _r(pos[0] + math.cos(a) * math.cos(t)),
            _r(pos[1] + math.sin(a) * math.cos(t)),
            _r(pos[2] - math.sin(t)),
        )
        self.mounts[name] = mount
        return BaseStation(name, pos, look_at=look)

    def _free_share(self, spec: SceneSpec) -> float:
        """Share of the UE area's bounding box where a UE may stand (Monte Carlo, 400 draws)."""
        area = spec.ue_area
        xs = self.rng.uniform(area.x[0], area.x[1], 400)
        ys = self.rng.uniform(area.y[0], area.y[1], 400)
        return float(
            np.mean(
                [
                    spec.ue_allowed(float(x), float(y), area.height)
                    for x, y in zip(xs, ys, strict=True)
                ]
            )
        )


def _rect(x0: float, y0: float, x1: float, y1: float) -> tuple[Vec2, ...]:
    return ((_r(x0), _r(y0)), (_r(x1), _r(y0)), (_r(x1), _r(y1)), (_r(x0), _r(y1)))
