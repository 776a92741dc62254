"""Scene descriptions: a room, its obstacles, its base stations and where UEs may stand.

A `SceneSpec` is plain data (loadable from JSON or YAML) so that users can define
their own sites without touching code; `training.sim.raytrace` turns it into a
Sionna RT scene. All coordinates are metres in the site's own frame: the floor is
z = 0, the room spans [0, size_x] x [0, size_y] x [0, size_z].
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# ITU-R P.2040 materials that Sionna RT knows at 1.272 GHz (others are out of range there).
ITU_MATERIALS = (
    "concrete",
    "brick",
    "plasterboard",
    "wood",
    "glass",
    "ceiling_board",
    "chipboard",
    "plywood",
    "marble",
    "metal",
)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]


class SceneSpecError(ValueError):
    """A scene description is invalid; the message names the field and what was expected."""


def _vec(value: Any, n: int, where: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise SceneSpecError(f"{where}: expected {n} numbers, got {value!r}") from exc
    if len(out) != n:
        raise SceneSpecError(f"{where}: expected {n} numbers, got {len(out)}")
    return out


def _material(name: str, where: str) -> str:
    if name not in ITU_MATERIALS:
        raise SceneSpecError(f"{where}: unknown material {name!r}; expected one of {ITU_MATERIALS}")
    return name


@dataclass(frozen=True)
class Cuboid:
    """An axis-aligned box standing in the room: a shelf, a machine, a cabinet, a partition."""

    name: str
    min: Vec3
    max: Vec3
    material: str = "metal"

    def contains(self, x: float, y: float, z: float, margin: float = 0.0) -> bool:
        """Whether a point lies inside the box grown by `margin` on every side."""
        lo, hi = self.min, self.max
        return (
            lo[0] - margin <= x <= hi[0] + margin
            and lo[1] - margin <= y <= hi[1] + margin
            and lo[2] - margin <= z <= hi[2] + margin
        )


@dataclass(frozen=True)
class BaseStation:
    """A 4x2 array on a wall or in a corner; `look_at` sets where its boresight points.

    `look_at=None` points it at the centre of the UE area on the floor, so a
    ceiling-mounted array faces down into the room as in the paper's setting.
    """

    name: str
    position: Vec3
    look_at: Vec3 | None = None


@dataclass(frozen=True)
class UEArea:
    """The rectangle UEs are placed in, at a fixed antenna height above the floor."""

    x: Vec2
    y: Vec2
    height: float = 1.0


@dataclass(frozen=True)
class SceneSpec:
    """One site: a closed room with walls, floor and ceiling, obstacles and base stations.

    Each base station is one environment in the output file: a site with one BS
    writes the group ``<name>``, a site with several writes ``<name>/<bs name>``.
    """

    name: str
    size: Vec3
    ue_area: UEArea
    base_stations: tuple[BaseStation, ...]
    obstacles: tuple[Cuboid, ...] = ()
    wall_material: str = "concrete"
    wall_thickness: float = 0.2
    floor_material: str = "concrete"
    ceiling_material: str = "concrete"
    ceiling_thickness: float = 0.2
    clearance: float = 0.2
    """Minimum distance between a UE and any obstacle or wall (UEs never stand inside metal)."""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes kept in the output's `source` attribute."""

    def __post_init__(self) -> None:
        self.validate()

    # --- validation -------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise `SceneSpecError` naming the first field that is wrong."""
        if not _NAME.match(self.name):
            raise SceneSpecError(f"name: {self.name!r} must match {_NAME.pattern}")
        sx, sy, sz = self.size
        if min(sx, sy, sz) <= 0:
            raise SceneSpecError(f"size: expected three positive lengths, got {self.size}")
        for where, mat in (
            ("wall_material", self.wall_material),
            ("floor_material", self.floor_material),
            ("ceiling_material", self.ceiling_material),
        ):
            _material(mat, where)
        if self.wall_thickness <= 0 or self.ceiling_thickness <= 0:
            raise SceneSpecError("wall_thickness/ceiling_thickness: expected > 0 metres")
        if self.clearance < 0:
            raise SceneSpecError(f"clearance: expected >= 0, got {self.clearance}")
        area = self.ue_area
        if not (0 <= area.x[0] < area.x[1] <= sx and 0 <= area.y[0] < area.y[1] <= sy):
            raise SceneSpecError(
                f"ue_area: x {area.x} and y {area.y} must be increasing ranges inside the room "
                f"[0, {sx}] x [0, {sy}]"
            )
        if not 0 < area.height < sz:
            raise SceneSpecError(f"ue_area.height: expected in (0, {sz}), got {area.height}")
        if not self.base_stations:
            raise SceneSpecError("base_stations: expected at least one base station")
        names = [bs.name for bs in self.base_stations]
        if len(set(names)) != len(names):
            raise SceneSpecError(f"base_stations: names must be unique, got {names}")
        for i, bs in enumerate(self.base_stations):
            if not _NAME.match(bs.name):
                raise SceneSpecError(
                    f"base_stations[{i}].name: {bs.name!r} must match {_NAME.pattern}"
                )
            if not self._inside(bs.position):
                raise SceneSpecError(
                    f"base_stations[{i}].position: {bs.position} is outside the room {self.size}"
                )
            if any(ob.contains(*bs.position) for ob in self.obstacles):
                raise SceneSpecError(
                    f"base_stations[{i}].position: {bs.position} is inside an obstacle"
                )
        for i, ob in enumerate(self.obstacles):
            _material(ob.material, f"obstacles[{i}].material")
            if not all(lo < hi for lo, hi in zip(ob.min, ob.max, strict=True)):
                raise SceneSpecError(
                    f"obstacles[{i}] ({ob.name}): min {ob.min} must be < max {ob.max}"
                )
            if not (self._inside(ob.min) and self._inside(ob.max)):
                raise SceneSpecError(
                    f"obstacles[{i}] ({ob.name}): must lie inside the room {self.size}"
                )

    def _inside(self, p: tuple[float, ...]) -> bool:
        return all(0 <= v <= s for v, s in zip(p, self.size, strict=True))

    # --- derived ----------------------------------------------------------------------------

    def environment_names(self) -> list[str]:
        """The HDF5 group of each base station, in base-station order."""
        if len(self.base_stations) == 1:
            return [self.name]
        return [f"{self.name}/{bs.name}" for bs in self.base_stations]

    def look_at(self, bs: BaseStation) -> Vec3:
        """Where `bs` points: its own `look_at`, else the UE-area centre on the floor."""
        if bs.look_at is not None:
            return bs.look_at
        area = self.ue_area
        return ((area.x[0] + area.x[1]) / 2, (area.y[0] + area.y[1]) / 2, 0.0)

    def ue_allowed(self, x: float, y: float, z: float) -> bool:
        """Whether a UE may stand here: inside the room with clearance, outside every obstacle."""
        c = self.clearance
        sx, sy, _ = self.size
        if not (c <= x <= sx - c and c <= y <= sy - c):
            return False
        return not any(ob.contains(x, y, z, margin=c) for ob in self.obstacles)

    # --- (de)serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; `from_dict(to_dict())` gives back an equal spec."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        """Build a spec from parsed JSON/YAML, with errors naming the bad field."""
        if not isinstance(data, dict):
            raise SceneSpecError(f"scene: expected a mapping, got {type(data).__name__}")
        known = {
            "name",
            "size",
            "ue_area",
            "base_stations",
            "obstacles",
            "wall_material",
            "wall_thickness",
            "floor_material",
            "ceiling_material",
            "ceiling_thickness",
            "clearance",
            "description",
            "extra",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise SceneSpecError(
                f"scene: unknown fields {unknown}; expected some of {sorted(known)}"
            )
        for required in ("name", "size", "ue_area", "base_stations"):
            if required not in data:
                raise SceneSpecError(f"scene: missing required field {required!r}")
        try:
            area = data["ue_area"]
            ue_area = UEArea(
                x=_vec(area["x"], 2, "ue_area.x"),  # type: ignore[arg-type]
                y=_vec(area["y"], 2, "ue_area.y"),  # type: ignore[arg-type]
                height=float(area.get("height", 1.0)),
            )
            stations = tuple(
                BaseStation(
                    name=str(bs["name"]),
                    position=_vec(bs["position"], 3, f"base_stations[{i}].position"),  # type: ignore[arg-type]
                    look_at=None
                    if bs.get("look_at") is None
                    else _vec(bs["look_at"], 3, f"base_stations[{i}].look_at"),  # type: ignore[arg-type]
                )
                for i, bs in enumerate(data["base_stations"])
            )
            obstacles = tuple(
                Cuboid(
                    name=str(ob["name"]),
                    min=_vec(ob["min"], 3, f"obstacles[{i}].min"),  # type: ignore[arg-type]
                    max=_vec(ob["max"], 3, f"obstacles[{i}].max"),  # type: ignore[arg-type]
                    material=str(ob.get("material", "metal")),
                )
                for i, ob in enumerate(data.get("obstacles", ()))
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise SceneSpecError(
                f"scene: malformed entry ({exc!r}); see SceneSpec's fields"
            ) from exc
        rest = {
            k: v
            for k, v in data.items()
            if k not in {"size", "ue_area", "base_stations", "obstacles"}
        }
        return cls(
            size=_vec(data["size"], 3, "size"),  # type: ignore[arg-type]
            ue_area=ue_area,
            base_stations=stations,
            obstacles=obstacles,
            **rest,
        )

    @classmethod
    def load(cls, path: str | Path) -> SceneSpec:
        """Read a spec from a ``.json``, ``.yaml`` or ``.yml`` file."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such scene file")
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() in {".yaml", ".yml"}:
            import yaml  # only needed for YAML specs

            data = yaml.safe_load(text)
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise SceneSpecError(f"{p}: expected a .json, .yaml or .yml scene file")
        try:
            return cls.from_dict(data)
        except SceneSpecError as exc:
            raise SceneSpecError(f"{p}: {exc}") from exc
