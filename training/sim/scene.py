"""Scene descriptions: a room, its obstacles, its base stations and where UEs may stand.

A `SceneSpec` is plain data (loadable from JSON or YAML) so that users can define
their own sites without touching code; `training.sim.raytrace` turns it into a
Sionna RT scene. All coordinates are metres in the site's own frame: the floor is
z = 0, the room spans [0, size_x] x [0, size_y] x [0, size_z].
"""

from __future__ import annotations

import json
import math
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
_GROUP = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}(/[a-z0-9][a-z0-9_-]{0,62})*$")

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively: what JSON and YAML's safe dumper can write."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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
    """A box standing in the room: a shelf, a machine, a cabinet, a partition, an inner wall.

    `min`/`max` are its extents before rotation; `yaw_deg` turns it about the vertical
    axis through its centre (counter-clockwise seen from above), so machines and desks
    need not line up with the walls. `kind` says what it stands for (plots, statistics).
    """

    name: str
    min: Vec3
    max: Vec3
    material: str = "metal"
    yaw_deg: float = 0.0
    kind: str = ""

    @property
    def centre(self) -> Vec3:
        lo, hi = self.min, self.max
        return ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2)

    @property
    def half(self) -> Vec3:
        lo, hi = self.min, self.max
        return ((hi[0] - lo[0]) / 2, (hi[1] - lo[1]) / 2, (hi[2] - lo[2]) / 2)

    def contains(self, x: float, y: float, z: float, margin: float = 0.0) -> bool:
        """Whether a point lies inside the box grown by `margin` on every side."""
        lo, hi = self.min, self.max
        if self.yaw_deg == 0.0:  # the exact test the fixed scenes' positions were drawn with
            return (
                lo[0] - margin <= x <= hi[0] + margin
                and lo[1] - margin <= y <= hi[1] + margin
                and lo[2] - margin <= z <= hi[2] + margin
            )
        if not lo[2] - margin <= z <= hi[2] + margin:
            return False
        (cx, cy, _), (hx, hy, _) = self.centre, self.half
        c, s = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        dx, dy = x - cx, y - cy
        return abs(c * dx + s * dy) <= hx + margin and abs(-s * dx + c * dy) <= hy + margin

    def footprint(self) -> list[Vec2]:
        """The four floor corners after rotation, counter-clockwise."""
        (cx, cy, _), (hx, hy, _) = self.centre, self.half
        c, s = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        return [
            (cx + c * u - s * v, cy + s * u + c * v)
            for u, v in ((-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy))
        ]


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
    """Where UEs are placed: the rectangle `x` x `y`, or the union of `polygons` inside it.

    `height` is the UE antenna height above the floor; `height_jitter` the standard
    deviation (metres) of a Gaussian spread around it, drawn per position.
    """

    x: Vec2
    y: Vec2
    height: float = 1.0
    polygons: tuple[tuple[Vec2, ...], ...] = ()
    """Optional: simple polygons (vertices in order); UEs stand inside one of them."""
    height_jitter: float = 0.0

    def contains_xy(self, x: float, y: float) -> bool:
        """Whether (x, y) is in the area (rectangle, or a polygon when there are any)."""
        if not (self.x[0] <= x <= self.x[1] and self.y[0] <= y <= self.y[1]):
            return False
        return not self.polygons or any(_in_polygon(x, y, poly) for poly in self.polygons)


def _in_polygon(x: float, y: float, poly: tuple[Vec2, ...]) -> bool:
    """Even-odd ray casting: is (x, y) inside the simple polygon `poly`?"""
    inside = False
    n = len(poly)
    for i in range(n):
        (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % n]
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


@dataclass(frozen=True)
class SceneSpec:
    """One site: a closed room with walls, floor and ceiling, obstacles and base stations.

    Each base station is one environment in the output file: a site with one BS
    writes the group ``<name>``, a site with several writes ``<name>/<bs name>``;
    with `group` set, every BS writes ``<group>/<bs name>`` (e.g. ``proc/s0007/bs1``).
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
    group: str = ""
    """HDF5 group prefix of this scene's environments; empty: derived from `name`."""

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
        if not 0 <= area.height_jitter < sz:
            raise SceneSpecError(
                f"ue_area.height_jitter: expected >= 0 metres, got {area.height_jitter}"
            )
        for i, poly in enumerate(area.polygons):
            if len(poly) < 3:
                raise SceneSpecError(f"ue_area.polygons[{i}]: expected >= 3 vertices")
            if not all(
                area.x[0] <= px <= area.x[1] and area.y[0] <= py <= area.y[1] for px, py in poly
            ):
                raise SceneSpecError(
                    f"ue_area.polygons[{i}]: vertices must lie inside ue_area x {area.x}, "
                    f"y {area.y}"
                )
        if self.group and not _GROUP.match(self.group):
            raise SceneSpecError(f"group: {self.group!r} must match {_GROUP.pattern}")
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
            # a turned box may reach past its unturned extents: check its real corners
            corners = [(x, y, z) for x, y in ob.footprint() for z in (ob.min[2], ob.max[2])]
            if not all(self._inside(c, tol=1e-6) for c in corners):
                raise SceneSpecError(
                    f"obstacles[{i}] ({ob.name}): must lie inside the room {self.size}"
                )

    def _inside(self, p: tuple[float, ...], tol: float = 0.0) -> bool:
        return all(-tol <= v <= s + tol for v, s in zip(p, self.size, strict=True))

    # --- derived ----------------------------------------------------------------------------

    def environment_names(self) -> list[str]:
        """The HDF5 group of each base station, in base-station order."""
        if self.group:
            return [f"{self.group}/{bs.name}" for bs in self.base_stations]
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
        if self.ue_area.polygons and not self.ue_area.contains_xy(x, y):
            return False
        return not any(ob.contains(x, y, z, margin=c) for ob in self.obstacles)

    # --- (de)serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able data (lists, not tuples); `from_dict` gives back an equal spec."""
        plain = _plain(asdict(self))
        assert isinstance(plain, dict)
        return plain

    def to_yaml(self) -> str:
        """The spec as YAML text that `SceneSpec.load` reads back to an equal spec."""
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None))

    def dump(self, path: str | Path) -> Path:
        """Write the spec to a ``.yaml``/``.yml`` or ``.json`` file."""
        p = Path(path)
        if p.suffix.lower() == ".json":
            p.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        elif p.suffix.lower() in {".yaml", ".yml"}:
            p.write_text(self.to_yaml(), encoding="utf-8")
        else:
            raise SceneSpecError(f"{p}: expected a .json, .yaml or .yml scene file")
        return p

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
            "group",
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
                polygons=tuple(
                    tuple(
                        _vec(v, 2, f"ue_area.polygons[{i}][{j}]")  # type: ignore[misc]
                        for j, v in enumerate(poly)
                    )
                    for i, poly in enumerate(area.get("polygons") or ())
                ),
                height_jitter=float(area.get("height_jitter", 0.0)),
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
                    yaw_deg=float(ob.get("yaw_deg", 0.0)),
                    kind=str(ob.get("kind", "")),
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
