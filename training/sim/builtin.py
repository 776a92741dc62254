"""The built-in sites, modelled on the paper's setting (we cannot download its measurements).

- ``industrial``: a 30 x 20 x 8 m factory hall with rows of metal shelves and
  machines, four ceiling-high arrays in its corners facing down into the hall.
  Each array is one source environment (``industrial/bs0`` .. ``bs3``); the
  shelves shadow different parts of the floor for each array, so every one sees
  a mix of LOS and NLOS.
- ``lab-los``: an empty 8 x 6 x 3 m lab with one array on a wall: LOS everywhere.
- ``lab-nlos``: the same kind of lab with a metal partition in the middle that
  puts the area behind it in NLOS.
"""

from __future__ import annotations

from collections.abc import Callable

from training.sim.scene import BaseStation, Cuboid, SceneSpec, UEArea


def industrial() -> SceneSpec:
    """Factory hall with four corner arrays, metal shelves and machines."""
    sx, sy, sz = 30.0, 20.0, 8.0
    shelves = tuple(
        Cuboid(f"shelf{i}", (x0, y0, 0.0), (x0 + 1.0, y0 + 6.0, 4.5), "metal")
        for i, (x0, y0) in enumerate(
            [(7.0, 3.0), (7.0, 11.0), (14.5, 7.0), (22.0, 3.0), (22.0, 11.0)]
        )
    )
    machines = (
        Cuboid("machine0", (11.0, 15.5, 0.0), (13.5, 17.5, 2.5), "metal"),
        Cuboid("machine1", (17.0, 2.0, 0.0), (19.5, 4.5, 2.5), "metal"),
        Cuboid("machine2", (3.0, 9.0, 0.0), (4.5, 11.0, 3.0), "metal"),
        Cuboid("machine3", (26.0, 9.0, 0.0), (27.5, 11.0, 3.0), "metal"),
    )
    h = 6.0
    stations = (
        BaseStation("bs0", (0.5, 0.5, h)),
        BaseStation("bs1", (sx - 0.5, 0.5, h)),
        BaseStation("bs2", (sx - 0.5, sy - 0.5, h)),
        BaseStation("bs3", (0.5, sy - 0.5, h)),
    )
    return SceneSpec(
        name="industrial",
        size=(sx, sy, sz),
        ue_area=UEArea(x=(1.0, sx - 1.0), y=(1.0, sy - 1.0), height=1.0),
        base_stations=stations,
        obstacles=shelves + machines,
        wall_material="concrete",
        floor_material="concrete",
        ceiling_material="metal",
        description="Factory hall 30x20x8 m, 5 metal shelf rows (4.5 m), 4 machines, "
        "4x2 arrays at 6 m in the corners facing the hall centre.",
    )


def lab_los() -> SceneSpec:
    """Empty lab with one wall-mounted array: every UE position is in line of sight."""
    sx, sy, sz = 8.0, 6.0, 3.0
    return SceneSpec(
        name="lab-los",
        size=(sx, sy, sz),
        ue_area=UEArea(x=(0.5, sx - 0.5), y=(0.5, sy - 0.5), height=1.0),
        base_stations=(BaseStation("bs0", (0.3, sy / 2, 2.5)),),
        wall_material="plasterboard",
        wall_thickness=0.1,
        floor_material="concrete",
        ceiling_material="ceiling_board",
        ceiling_thickness=0.05,
        description="Empty lab 8x6x3 m, plasterboard walls, "
        "one 4x2 array at 2.5 m on the west wall.",
    )


def lab_nlos() -> SceneSpec:
    """The lab with a 2.5 m metal partition in the middle that shadows the area behind it."""
    base = lab_los()
    partition = Cuboid("partition", (4.0, 1.5, 0.0), (4.1, 4.5, 2.6), "metal")
    return SceneSpec(
        name="lab-nlos",
        size=base.size,
        ue_area=base.ue_area,
        base_stations=base.base_stations,
        obstacles=(partition,),
        wall_material=base.wall_material,
        wall_thickness=base.wall_thickness,
        floor_material=base.floor_material,
        ceiling_material=base.ceiling_material,
        ceiling_thickness=base.ceiling_thickness,
        description="Lab 8x6x3 m with a 3 m wide, 2.6 m high metal partition at x = 4 m "
        "between the array and the far half of the room.",
    )


BUILTIN_SCENES: dict[str, Callable[[], SceneSpec]] = {
    "industrial": industrial,
    "lab-los": lab_los,
    "lab-nlos": lab_nlos,
}


def resolve_scene(name_or_path: str) -> SceneSpec:
    """A built-in scene by name, or a user's spec from a .json/.yaml file."""
    if name_or_path in BUILTIN_SCENES:
        return BUILTIN_SCENES[name_or_path]()
    if name_or_path.endswith((".json", ".yaml", ".yml")):
        return SceneSpec.load(name_or_path)
    raise ValueError(
        f"unknown scene {name_or_path!r}: expected one of {sorted(BUILTIN_SCENES)} "
        "or a path to a .json/.yaml scene file"
    )
