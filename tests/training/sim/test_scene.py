"""Scene descriptions: validation, (de)serialisation, Mitsuba XML, UE placement."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from training.sim.builtin import BUILTIN_SCENES, industrial, lab_nlos, resolve_scene
from training.sim.positions import sample_ue_positions
from training.sim.raytrace import scene_xml
from training.sim.scene import SceneSpec, SceneSpecError


@pytest.mark.parametrize("name", sorted(BUILTIN_SCENES))
def test_builtin_round_trips_through_dict_and_json(name: str, tmp_path: Path) -> None:
    spec = BUILTIN_SCENES[name]()
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(spec.to_dict()))
    assert SceneSpec.load(path) == spec
    assert resolve_scene(str(path)) == spec


def test_yaml_spec_defines_a_site_without_code(tmp_path: Path) -> None:
    path = tmp_path / "hall.yaml"
    path.write_text(
        "name: my-hall\nsize: [12, 8, 4]\nue_area: {x: [1, 11], y: [1, 7], height: 1.2}\n"
        "base_stations:\n  - {name: a, position: [0.5, 0.5, 3.5]}\n"
        "  - {name: b, position: [11.5, 7.5, 3.5], look_at: [6, 4, 0]}\n"
        "obstacles:\n  - {name: rack, min: [5, 3, 0], max: [6, 5, 2.5], material: metal}\n"
    )
    spec = SceneSpec.load(path)
    assert spec.environment_names() == ["my-hall/a", "my-hall/b"]
    assert spec.look_at(spec.base_stations[0]) == (6.0, 4.0, 0.0)
    assert spec.obstacles[0].material == "metal"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"wall_material": "cheese"}, "unknown material"),
        ({"size": [10, 10]}, "expected 3 numbers"),
        ({"base_stations": []}, "at least one base station"),
        ({"base_stations": [{"name": "a", "position": [50, 1, 1]}]}, "outside the room"),
        ({"obstacles": [{"name": "o", "min": [2, 2, 0], "max": [1, 3, 1]}]}, "must be < max"),
        ({"colour": "red"}, "unknown fields"),
        ({"name": "Bad Name"}, "must match"),
    ],
)
def test_bad_specs_say_what_is_wrong(change: dict[str, object], message: str) -> None:
    data = lab_nlos().to_dict()
    data.update(change)
    with pytest.raises(SceneSpecError, match=message):
        SceneSpec.from_dict(data)


def test_unknown_scene_name_lists_the_builtins() -> None:
    with pytest.raises(ValueError, match="industrial"):
        resolve_scene("warehouse")


def test_scene_xml_has_room_and_obstacles() -> None:
    spec = industrial()
    root = ET.fromstring(scene_xml(spec))
    ids = [s.get("id") for s in root.iter("shape")]
    assert {"floor", "ceiling", "wall-west", "wall-east", "wall-south", "wall-north"} <= set(ids)
    assert sum(1 for s in root.iter("shape") if s.get("type") == "cube") == len(spec.obstacles)
    types = {b.find("string").get("value") for b in root.iter("bsdf")}  # type: ignore[union-attr]
    assert types == {"concrete", "metal"}


def test_positions_avoid_obstacles_and_are_seeded() -> None:
    spec = industrial()
    a = sample_ue_positions(spec, 2000, np.random.default_rng(3))
    b = sample_ue_positions(spec, 2000, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2000, 3)
    for ob in spec.obstacles:
        inside = (
            (a[:, 0] >= ob.min[0])
            & (a[:, 0] <= ob.max[0])
            & (a[:, 1] >= ob.min[1])
            & (a[:, 1] <= ob.max[1])
        )
        assert not inside.any(), ob.name
    assert np.all(a[:, 2] == spec.ue_area.height)
    jittered = sample_ue_positions(spec, 500, np.random.default_rng(3), height_jitter_std_m=0.1)
    assert 0.05 < jittered[:, 2].std() < 0.15
