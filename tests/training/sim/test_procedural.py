"""Procedural scenes and chains: seeded, plain data, valid; UEs never stand in obstacles."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.path import Path as MplPath

from training.sim.chain import PATTERNS, TIMINGS, ChainRandomisation, RadioChain, sample_chain
from training.sim.positions import sample_ue_positions
from training.sim.procedural import (
    FAMILIES,
    PROCEDURAL_PRESETS,
    get_procedural_preset,
    procedural_chains,
    procedural_scene,
)
from training.sim.raytrace import scene_xml
from training.sim.scene import ITU_MATERIALS, Cuboid, SceneSpec

CORPUS = [procedural_scene(k, "corpus") for k in range(70)]


def test_scene_is_a_pure_function_of_its_number() -> None:
    assert procedural_scene(5, "corpus") == CORPUS[5]
    assert procedural_scene(6, "corpus") != CORPUS[5]
    # held-out targets come from another range and share no scene with the sources
    targets = [procedural_scene(k, "corpus") for k in range(100_000, 100_008)]
    assert not {t.to_yaml().split("\n", 1)[1] for t in targets} & {
        s.to_yaml().split("\n", 1)[1] for s in CORPUS
    }
    assert targets[0].environment_names()[0] == "proc/s100000/bs0"


def test_every_family_with_sizes_materials_and_stations_in_range() -> None:
    families = Counter(spec.extra["family"] for spec in CORPUS)
    assert set(families) == set(FAMILIES)
    for spec in CORPUS:
        assert min(spec.size[:2]) >= 1.8 and max(spec.size[:2]) <= 50.0
        assert {spec.wall_material, spec.floor_material, spec.ceiling_material} <= set(
            ITU_MATERIALS
        )
        assert 1 <= len(spec.base_stations) <= 4
        assert spec.environment_names() == [
            f"proc/{spec.name}/{bs.name}" for bs in spec.base_stations
        ]
        for bs in spec.base_stations:
            assert not any(ob.contains(*bs.position) for ob in spec.obstacles)
    kinds = Counter(ob.kind for spec in CORPUS for ob in spec.obstacles)
    assert {"desk", "cabinet", "shelf", "machine", "pillar", "partition", "person", "wall"} <= set(
        kinds
    )
    assert any(ob.yaw_deg % 90 for spec in CORPUS for ob in spec.obstacles)  # rotated cuboids
    mounts = Counter(m for spec in CORPUS for m in spec.extra["mounts"])
    assert set(mounts) == {"wall", "corner", "ceiling"}
    for spec in CORPUS:
        for bs, mount in zip(spec.base_stations, spec.extra["mounts"], strict=True):
            look = spec.look_at(bs)
            tilt = np.degrees(
                np.arctan2(
                    bs.position[2] - look[2], np.hypot(*np.subtract(look[:2], bs.position[:2]))
                )
            )
            assert (60 <= tilt <= 89.5) if mount == "ceiling" else (-0.5 <= tilt <= 45.5), (
                spec.name,
                mount,
                tilt,
            )
    assert any(len(spec.ue_area.polygons) > 1 for spec in CORPUS)  # several UE areas
    assert any(len(poly) == 6 for spec in CORPUS for poly in spec.ue_area.polygons)  # an L


def test_tiny_preset_keeps_to_its_families_and_size() -> None:
    tiny = get_procedural_preset("tiny")
    for k in range(20):
        spec = procedural_scene(k, tiny)
        assert spec.extra["family"] in tiny.families
        assert max(spec.size[:2]) <= tiny.max_side_m
        assert len(spec.base_stations) <= tiny.max_base_stations
    with pytest.raises(ValueError, match="unknown procedural preset"):
        get_procedural_preset("huge")
    assert set(PROCEDURAL_PRESETS) >= {"tiny", "corpus"}


@pytest.mark.parametrize("index", [0, 3, 8, 21])
def test_yaml_round_trip_is_identical(index: int, tmp_path: Path) -> None:
    spec = CORPUS[index]
    assert SceneSpec.from_dict(yaml.safe_load(spec.to_yaml())) == spec
    assert SceneSpec.load(spec.dump(tmp_path / "scene.yaml")) == spec
    assert SceneSpec.load(spec.dump(tmp_path / "scene.json")) == spec


def test_all_scenes_round_trip() -> None:
    for spec in CORPUS:
        assert SceneSpec.from_dict(yaml.safe_load(spec.to_yaml())) == spec, spec.name


def test_ue_positions_never_inside_obstacles_and_inside_the_areas() -> None:
    rng = np.random.default_rng(0)
    for spec in CORPUS[:40]:
        pos = sample_ue_positions(spec, 300, rng)
        for ob in spec.obstacles:
            # an independent point-in-polygon test on the turned footprint (a UE may be
            # held above a desk, never inside it)
            below_top = pos[:, 2] <= ob.max[2]
            inside = MplPath(ob.footprint()).contains_points(pos[:, :2]) & below_top
            assert not inside.any(), (spec.name, ob.name)
        in_area = np.zeros(len(pos), dtype=bool)
        for poly in spec.ue_area.polygons:
            in_area |= MplPath(poly).contains_points(pos[:, :2], radius=1e-9)
        assert in_area.all(), spec.name
        assert pos[:, 2].std() <= spec.ue_area.height_jitter * 1.5 + 1e-9


def test_rotated_cuboid_contains_and_xml() -> None:
    box = Cuboid("m", (1.0, 1.0, 0.0), (3.0, 2.0, 1.0), yaw_deg=90.0)
    # turned by 90 degrees about its centre (2, 1.5): now 1 m wide in x, 2 m in y
    assert box.contains(2.0, 2.4, 0.5) and not box.contains(2.8, 1.5, 0.5)
    assert box.contains(2.8, 1.5, 0.5, margin=0.4)
    corners = np.asarray(box.footprint())
    np.testing.assert_allclose(corners.min(axis=0), [1.5, 0.5], atol=1e-12)
    spec = CORPUS[0]
    turned = [ob for ob in spec.obstacles if ob.yaw_deg]
    root = ET.fromstring(scene_xml(spec))
    rotations = [r for r in root.iter("rotate") if r.get("z") == "1"]
    assert len(rotations) == len(turned)


def test_polygon_outside_the_area_is_refused() -> None:
    data = CORPUS[0].to_dict()
    data["ue_area"]["polygons"] = [[[0, 0], [1000, 0], [0, 1]]]
    with pytest.raises(ValueError, match="polygons"):
        SceneSpec.from_dict(data)


def test_chains_are_seeded_recorded_and_cover_the_levers() -> None:
    spec = CORPUS[1]
    a = procedural_chains(1, spec, "corpus", randomise=True)
    assert a == procedural_chains(1, spec, "corpus", randomise=True)
    assert len(a) == len(spec.base_stations)
    assert all(c == RadioChain() for c in procedural_chains(1, spec, "corpus", randomise=False))
    assert RadioChain.from_dict(a[0].to_dict()) == a[0]
    rng = np.random.default_rng(0)
    ranges = ChainRandomisation()
    draws = [sample_chain(rng, ranges) for _ in range(200)]
    assert {c.radio.pattern for c in draws} == set(PATTERNS)
    assert {c.measurement.timing for c in draws} == set(TIMINGS)
    assert any(c.measurement.antenna_phase_deg for c in draws)
    assert any(not c.measurement.common_phase_offset for c in draws)
    powers = [c.measurement.tx_power_dbm for c in draws]
    assert ranges.tx_power_dbm[0] <= min(powers) < max(powers) <= ranges.tx_power_dbm[1]


def test_multi_room_floors_are_traced_with_refraction() -> None:
    preset = get_procedural_preset("corpus")
    for spec in CORPUS[:14]:
        inner_walls = spec.extra["family"] == "multi-room"
        assert preset.solver_for(spec).refraction == inner_walls, spec.name
    assert not preset.solver.refraction  # closed halls keep it off


def test_min_base_stations_makes_multi_bs_targets() -> None:
    from dataclasses import replace

    from training.sim.procedural import get_procedural_preset, procedural_scene

    corpus = get_procedural_preset("corpus")
    three = corpus.with_min_base_stations(3)
    counts = [len(procedural_scene(k, three).base_stations) for k in range(100000, 100008)]
    assert min(counts) >= 3 and max(counts) <= 4
    # the default keeps every scene (and the recorded options of earlier runs) as they were
    assert procedural_scene(5, replace(corpus, min_base_stations=1)) == procedural_scene(5, corpus)
    assert "min_base_stations" not in corpus.to_dict()
    assert three.to_dict()["min_base_stations"] == 3
    tiny = get_procedural_preset("tiny").with_min_base_stations(3)
    assert tiny.max_base_stations == 3
    assert all(len(procedural_scene(k, tiny).base_stations) == 3 for k in range(4))
    with pytest.raises(ValueError, match=r"max_base_stations: expected 1\.\.4"):
        corpus.with_min_base_stations(5)
