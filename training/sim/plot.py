"""One PNG per environment: the site from above, UEs coloured by LOS/NLOS and by received power.

These plots are how a person checks a generated site at a glance: are the shadows
where the obstacles are, does the power fall away from the array?
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Polygon, Rectangle

from training.data.fingerprints import list_environments, open_environment, read_environment_meta
from training.sim.scene import SceneSpec, SceneSpecError

MAX_POINTS = 20_000
"""Larger environments are drawn from an evenly spaced subset, to keep plots light."""


def _scene_of(source: dict[str, Any]) -> SceneSpec | None:
    data = source.get("scene")
    if not isinstance(data, dict):
        return None
    try:
        return SceneSpec.from_dict(data)
    except SceneSpecError:
        return None


def _draw_site(ax: Axes, spec: SceneSpec | None, bs_name: str | None, bs_xyz: Any) -> None:
    if spec is not None:
        sx, sy, _ = spec.size
        ax.add_patch(Rectangle((0, 0), sx, sy, fill=False, lw=2.5, ec="0.2"))
        for ob in spec.obstacles:
            ax.add_patch(
                Polygon(
                    ob.footprint(),
                    closed=True,
                    fc=_obstacle_colour(ob.material, ob.kind),
                    ec="0.2",
                    alpha=0.9,
                    zorder=3,
                )
            )
        for bs in spec.base_stations:
            active = bs.name == bs_name or len(spec.base_stations) == 1
            x, y, _ = bs.position
            tx, ty, _ = spec.look_at(bs)
            length = 0.12 * max(sx, sy)
            norm = math.hypot(tx - x, ty - y) or 1.0
            ax.plot(
                x, y, marker="^", ms=11 if active else 7, c="red" if active else "0.4", zorder=5
            )
            if active:
                ax.annotate(
                    "",
                    xy=(x + length * (tx - x) / norm, y + length * (ty - y) / norm),
                    xytext=(x, y),
                    arrowprops={"arrowstyle": "->", "color": "red", "lw": 2},
                    zorder=5,
                )
        ax.set_xlim(-0.03 * sx, 1.03 * sx)
        ax.set_ylim(-0.03 * sy, 1.03 * sy)
    else:
        ax.plot(bs_xyz[0], bs_xyz[1], marker="^", ms=11, c="red", zorder=5)
    ax.set_aspect("equal")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")


def _obstacle_colour(material: str, kind: str) -> str:
    if kind == "wall":
        return "0.25"
    if kind == "person":
        return "salmon"
    return {"metal": "0.6", "glass": "lightblue"}.get(material, "tan")


def draw_scene(ax: Axes, spec: SceneSpec, *, title: str | None = None) -> None:
    """Top view of a scene: walls, obstacles, UE areas (green), BSs (red) and their facing."""
    for poly in spec.ue_area.polygons or (
        (
            (spec.ue_area.x[0], spec.ue_area.y[0]),
            (spec.ue_area.x[1], spec.ue_area.y[0]),
            (spec.ue_area.x[1], spec.ue_area.y[1]),
            (spec.ue_area.x[0], spec.ue_area.y[1]),
        ),
    ):
        ax.add_patch(Polygon(poly, closed=True, fc="palegreen", ec="green", alpha=0.5, zorder=1))
    _draw_site(ax, spec, spec.base_stations[0].name, spec.base_stations[0].position)
    for bs in spec.base_stations[1:]:  # `_draw_site` highlights one; a sheet shows all alike
        x, y, _ = bs.position
        ax.plot(x, y, marker="^", ms=7, c="red", zorder=5)
    for bs in spec.base_stations:
        x, y, _ = bs.position
        tx, ty, _ = spec.look_at(bs)
        length = 0.1 * max(spec.size[0], spec.size[1])
        norm = math.hypot(tx - x, ty - y) or 1.0
        ax.plot([x, x + length * (tx - x) / norm], [y, y + length * (ty - y) / norm], c="red")
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.tick_params(labelsize=6)
    if title is not None:
        ax.set_title(title, fontsize=7)


def contact_sheet(specs: list[SceneSpec], out_png: str | Path, *, columns: int = 6) -> Path:
    """One PNG with a top-view thumbnail per scene (a glance over a whole corpus)."""
    if not specs:
        raise ValueError("contact sheet: no scenes to draw")
    cols = min(columns, len(specs))
    rows = math.ceil(len(specs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(specs) :]:
        ax.axis("off")
    for ax, spec in zip(axes.flat, specs, strict=False):
        family = spec.extra.get("family", "")
        sx, sy, sz = spec.size
        draw_scene(
            ax,
            spec,
            title=f"{spec.name} {family}\n{sx:g}x{sy:g}x{sz:g} m, {len(spec.obstacles)} obst, "
            f"{len(spec.base_stations)} BS",
        )
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def scenes_in_file(path: str | Path) -> list[SceneSpec]:
    """The distinct scenes recorded in a file's `source` attributes, in group order."""
    seen: dict[str, SceneSpec] = {}
    for env in list_environments(path):
        meta = read_environment_meta(path, env)
        spec = _scene_of(meta.source)
        if spec is not None:
            seen.setdefault(spec.group or spec.name, spec)
    return list(seen.values())


def plot_environment(path: str | Path, env: str, out_png: str | Path) -> Path:
    """Write the two-panel plot of one environment to `out_png`."""
    lazy = open_environment(path, env)
    meta = read_environment_meta(path, env)
    m = len(lazy)
    idx = np.unique(np.linspace(0, m - 1, min(m, MAX_POINTS)).astype(np.int64))
    data = lazy.read(idx)
    spec = _scene_of(meta.source)
    bs_name = meta.source.get("base_station") if isinstance(meta.source, dict) else None
    csi = data.csi.astype(np.float64)
    power = np.mean(csi[..., 0] ** 2 + csi[..., 1] ** 2, axis=(1, 2))
    power_db = 10 * np.log10(np.maximum(power, 1e-30))

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    ax = axes[0]
    _draw_site(ax, spec, bs_name, meta.bs_position)
    if data.los is not None:
        los = data.los
        ax.scatter(*data.pos[los].T, s=6, c="tab:green", label=f"LOS ({los.mean():.0%})", zorder=4)
        ax.scatter(
            *data.pos[~los].T, s=6, c="tab:purple", label=f"NLOS ({(~los).mean():.0%})", zorder=4
        )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, markerscale=2)
        ax.set_title(f"{env}: LOS / NLOS, {m} samples")
    else:
        ax.scatter(*data.pos.T, s=6, c="tab:blue", zorder=4)
        ax.set_title(f"{env}: {m} samples (no LOS flags)")
    ax = axes[1]
    _draw_site(ax, spec, bs_name, meta.bs_position)
    sc = ax.scatter(*data.pos.T, s=6, c=power_db, cmap="viridis", zorder=4)
    fig.colorbar(sc, ax=ax, label="received power (mean |H|² over antennas and subcarriers) [dB]")
    ax.set_title(f"{env}: received power")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_file(path: str | Path, out_dir: str | Path) -> list[Path]:
    """One PNG per environment of `path` in `out_dir`, named after the group (``/`` -> ``_``)."""
    envs = list_environments(path)
    if not envs:
        raise ValueError(f"{path}: holds no environments to plot")
    return [
        plot_environment(path, env, Path(out_dir) / f"{env.replace('/', '_')}.png") for env in envs
    ]
