"""Scene -> UE positions -> ray tracing in chunks -> measurement -> fingerprint file.

Positions are small and sampled up front; channels are traced, corrupted and
appended block by block (`BLOCK` positions at a time), so a large preset never
holds all its rays or CSI in memory.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from training.data.fingerprints import EnvironmentMeta, EnvironmentWriter, Fingerprints
from training.data.schema import ARRAY_LAYOUT, CARRIER_HZ, SUBCARRIER_SPACING_HZ
from training.sim.chain import RadioChain
from training.sim.measurement import MeasurementConfig, channel_power_db, measure
from training.sim.positions import sample_ue_positions
from training.sim.presets import Preset, get_preset
from training.sim.raytrace import RayTracer, SolverConfig, simulator_versions
from training.sim.scene import SceneSpec
from training.sim.trajectory import Trajectories, TrajectoryConfig, sample_trajectories

log = logging.getLogger(__name__)

GENERATOR = "csipos.training.sim"
BLOCK = 500
"""Positions traced and written per block. Fixed, because the measurement noise stream
is drawn block by block: changing it would change the numbers for a given seed."""


@dataclass
class EnvironmentReport:
    """What was written for one base station."""

    env: str
    samples: int
    los_share: float
    dropped: int
    """Positions no path reached."""
    wall_s: float
    undetected: int = 0
    """Positions below the chain's detection SNR (`MeasurementConfig.min_snr_db`)."""


@dataclass
class GenerationReport:
    """What `generate` wrote, and how long it took."""

    path: Path
    environments: list[EnvironmentReport] = field(default_factory=list)
    wall_s: float = 0.0


def _rngs(seed: int, scene: str) -> tuple[np.random.Generator, list[np.random.SeedSequence]]:
    """Independent streams for positions and each BS's measurement, keyed by scene name.

    Two scenes in one file with the same seed thus get different positions, and changing
    the measurement settings never moves the positions.
    """
    key = zlib.crc32(scene.encode())
    root = np.random.SeedSequence(entropy=seed, spawn_key=(key,))
    pos_seq, meas_seq = root.spawn(2)
    return np.random.Generator(np.random.PCG64(pos_seq)), meas_seq.spawn(64)


def generate(
    scene: SceneSpec,
    out: str | Path,
    *,
    preset: str | Preset = "tiny",
    seed: int = 0,
    positions: int | None = None,
    measurement: MeasurementConfig | None = None,
    solver: SolverConfig | None = None,
    chains: Sequence[RadioChain] | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    on_positions: Callable[[int], None] | None = None,
    trajectories: TrajectoryConfig | None = None,
) -> GenerationReport:
    """Simulate every base station of `scene` and write one environment per BS to `out`.

    `positions` overrides the preset's count; `solver` overrides the preset's solver
    settings. `chains` gives each BS its own radio and measurement (domain
    randomisation; default: the nominal radio and `measurement` for all, which keeps
    the fixed presets' data unchanged); UE heights always follow `measurement`.
    Existing groups of other scenes in `out` are kept; an existing group of this
    scene is an error unless `overwrite`. `quiet` hides the progress bar (library use);
    `on_positions(k)` is called as k more positions are traced. `trajectories` samples
    the UEs along seeded trajectories instead of independently (`training.sim.trajectory`);
    the samples then carry `time` and `track` (instead of `positions`).
    """
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed}")
    if positions is not None and positions < 1:
        raise ValueError(f"positions: expected at least 1, got {positions}")
    if len(scene.base_stations) > 64:
        raise ValueError(f"scene {scene.name!r}: at most 64 base stations are supported")
    chosen = get_preset(preset) if isinstance(preset, str) else preset
    solver = solver or SolverConfig(
        max_depth=chosen.solver.max_depth,
        samples_per_src=chosen.solver.samples_per_src,
        max_paths_per_src=chosen.solver.max_paths_per_src,
        bs_pattern=chosen.solver.bs_pattern,
        seed=seed % 2**31,
        refraction=chosen.solver.refraction,
    )
    measurement = measurement or MeasurementConfig()
    if chains is not None and len(chains) != len(scene.base_stations):
        raise ValueError(
            f"chains: expected one per base station ({len(scene.base_stations)}), got {len(chains)}"
        )
    if trajectories is not None and positions is not None:
        raise ValueError("positions and trajectories: give one (trajectories set the count)")
    n = positions if positions is not None else chosen.positions_for(scene)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    pos_rng, meas_seqs = _rngs(seed, scene.name)
    tracks: Trajectories | None = None
    if trajectories is not None:
        tracks = sample_trajectories(
            scene, trajectories, pos_rng, height_jitter_std_m=measurement.height_jitter_std_m
        )
        ue, n = tracks.pos, len(tracks)
    else:
        ue = sample_ue_positions(
            scene, n, pos_rng, height_jitter_std_m=measurement.height_jitter_std_m
        )
    tracer = RayTracer(scene, solver)
    versions = simulator_versions()
    report = GenerationReport(path=out)
    envs = scene.environment_names()

    with ExitStack() as stack:
        progress: Progress | None = None
        if not quiet:
            progress = stack.enter_context(
                Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                )
            )
        for b, (bs, env) in enumerate(zip(scene.base_stations, envs, strict=True)):
            task = progress.add_task(f"{env}", total=n) if progress is not None else None
            chain = chains[b] if chains is not None else RadioChain(measurement=measurement)
            carrier = chain.radio.carrier_hz or CARRIER_HZ
            source: dict[str, Any] = {
                "generator": GENERATOR,
                "versions": versions,
                "scene": scene.to_dict(),
                "base_station": bs.name,
                "preset": chosen.name,
                "positions": n,
                "seed": seed,
                "block": BLOCK,
                "solver": solver.to_dict(),
                "measurement": chain.measurement.to_dict(),
                "radio": {
                    "pattern": chain.radio.pattern or solver.bs_pattern,
                    "carrier_hz": carrier,
                    "orientation_jitter_deg": list(chain.radio.orientation_jitter_deg),
                },
                "chain": "randomised" if chains is not None else "nominal",
                "timing": chain.measurement.timing,
                **_trajectory_source(trajectories, tracks),
                "los": "the path solver found the direct BS-UE path",
                "subcarriers": "103 offsets (k - 51) * subcarrier_spacing_hz around carrier_hz",
                "csi_unit": "complex baseband path gain (unitless), tx power not applied",
            }
            meta = EnvironmentMeta(
                carrier_hz=carrier,
                subcarrier_spacing_hz=SUBCARRIER_SPACING_HZ,
                array=ARRAY_LAYOUT,
                bs_position=tuple(float(v) for v in bs.position),  # type: ignore[arg-type]
                description=f"{scene.description} Environment: base station {bs.name} at "
                f"{bs.position} facing {scene.look_at(bs)}.",
                source=source,
            )
            meas_rng = np.random.Generator(np.random.PCG64(meas_seqs[b]))
            t_env = time.perf_counter()
            dropped = 0
            undetected = 0
            n_los = 0
            with EnvironmentWriter(out, env, meta, overwrite=overwrite) as writer:
                for start in range(0, n, BLOCK):
                    block = ue[start : start + BLOCK]

                    def advance(k: int, task: Any = task) -> None:
                        if progress is not None:
                            progress.advance(task, k)
                        if on_positions is not None:
                            on_positions(k)

                    traced = tracer.trace(b, block, on_chunk=advance, radio=chain.radio)
                    # Positions no path reaches carry no fingerprint: drop them, say how many.
                    ok = np.isfinite(channel_power_db(traced.cfr))
                    dropped += int((~ok).sum())
                    if not ok.any():
                        continue
                    first = traced.first_delay_s
                    csi, snr_db = measure(
                        traced.cfr[ok],
                        chain.measurement,
                        meas_rng,
                        first_delay_s=None if first is None else first[ok],
                    )
                    keep = np.ones(len(csi), dtype=bool)
                    if chain.measurement.min_snr_db is not None:
                        # too weak to be detected: a real receiver reports nothing here
                        keep = snr_db >= chain.measurement.min_snr_db
                        undetected += int((~keep).sum())
                    ok_idx = np.flatnonzero(ok)[keep]
                    n_los += int(traced.los[ok_idx].sum())
                    if not keep.any():
                        continue
                    writer.append(
                        Fingerprints(
                            csi=csi[keep],
                            pos=block[ok_idx, :2].astype(np.float32),
                            los=traced.los[ok_idx],
                            snr_db=snr_db[keep],
                            time=None if tracks is None else tracks.time[start + ok_idx],
                            track=None if tracks is None else tracks.track[start + ok_idx],
                            # the UE's index in the scene: joins its BSs (training.data.site)
                            sample_id=(start + ok_idx).astype(np.int64),
                        )
                    )
                written = writer.count
            if dropped:
                log.warning("%s: dropped %d positions that no path reached", env, dropped)
            if undetected:
                log.info("%s: dropped %d positions below the detection SNR", env, undetected)
            env_report = EnvironmentReport(
                env=env,
                samples=written,
                los_share=n_los / max(written, 1),
                dropped=dropped,
                undetected=undetected,
                wall_s=time.perf_counter() - t_env,
            )
            log.info(
                "%s: %d samples (%.0f %% LOS) in %.1f s",
                env,
                written,
                100 * env_report.los_share,
                env_report.wall_s,
            )
            report.environments.append(env_report)
    report.wall_s = time.perf_counter() - started
    return report


def _trajectory_source(
    config: TrajectoryConfig | None, tracks: Trajectories | None
) -> dict[str, Any]:
    """The `source` entry of trajectory samples (nothing for independent positions)."""
    if config is None or tracks is None:
        return {}
    return {
        "trajectories": {
            **config.to_dict(),
            "motions": tracks.motion,
            "time": "seconds since the start; every track starts at 0",
            "generator": "training.sim.trajectory",
        }
    }
