"""Sionna RT ray tracing: a `SceneSpec` -> channel frequency responses [M, 8, 103] per base station.

Facts this module relies on (measured, see ../shared/notes/sionna-rt.md):
the LLVM backend needs libLLVM >= 19 (older versions abort the process at the
first solve), the BS is the transmitter (the uplink CSI follows by
reciprocity), refraction stays off in closed rooms, and the solver takes at most
50 receivers per call.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training.data.schema import N_ANTENNAS, N_SUBCARRIERS, SUBCARRIER_SPACING_HZ
from training.sim.scene import SceneSpec

log = logging.getLogger(__name__)

MAX_RECEIVERS_PER_CALL = 50
"""The solver de-duplicates paths in a fixed-size table that silently overflows with more
receivers per call (1,000 per call: 5 % of positions correct; 50: 100 %), at no extra total
time for smaller calls. Never raise this."""

LLVM_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1",
    "/usr/lib/aarch64-linux-gnu/libLLVM.so.19.1",
)
DEFAULT_DRJIT_CACHE = Path.home() / ".cache" / "csipos" / "drjit"


def subcarrier_offsets_hz() -> npt.NDArray[np.float64]:
    """Baseband frequencies of the 103 pilots, centred on the carrier (every 10th of 1024 bins)."""
    return (np.arange(N_SUBCARRIERS, dtype=np.float64) - N_SUBCARRIERS // 2) * SUBCARRIER_SPACING_HZ


class SimulatorUnavailableError(RuntimeError):
    """Sionna RT cannot run here (missing package or an LLVM that would crash the solver)."""


def _configure_drjit() -> None:
    # Both must be set before drjit is first imported.
    if "DRJIT_LIBLLVM_PATH" not in os.environ:
        for candidate in LLVM_CANDIDATES:
            if Path(candidate).is_file():
                os.environ["DRJIT_LIBLLVM_PATH"] = candidate
                break
    if "DRJIT_CACHE_DIR" not in os.environ:
        DEFAULT_DRJIT_CACHE.mkdir(parents=True, exist_ok=True)
        os.environ["DRJIT_CACHE_DIR"] = str(DEFAULT_DRJIT_CACHE)


def load_sionna() -> Any:
    """Import Sionna RT after checking LLVM (`SimulatorUnavailableError` if unusable)."""
    _configure_drjit()
    try:
        import drjit
        import sionna.rt as rt
    except ImportError as exc:
        raise SimulatorUnavailableError(
            f"Sionna RT is not installed ({exc}); install it with `pip install -e .[sim]`"
        ) from exc
    version = tuple(drjit.detail.llvm_version())
    if version < (19,):
        raise SimulatorUnavailableError(
            f"Dr.Jit found libLLVM {'.'.join(map(str, version))} but the ray tracer needs >= 19 "
            "(older versions abort the process at the first solve). Install it with "
            "`apt-get install -y libllvm19` and set DRJIT_LIBLLVM_PATH="
            "/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1"
        )
    return rt


def simulator_versions() -> dict[str, str]:
    """Versions of the ray-tracing stack, recorded in every generated file."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for pkg in ("sionna-rt", "mitsuba", "drjit", "csipos"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# --- scene -> Mitsuba XML ---------------------------------------------------------------------


def _f(v: float) -> str:
    return f"{v:.6g}"


def scene_xml(spec: SceneSpec) -> str:
    """Mitsuba XML of the room: thin-slab rectangles for walls/floor/ceiling, a cube per obstacle.

    Rectangles are Mitsuba's [-1, 1]^2 square in the xy plane (normal +z), cubes its
    [-1, 1]^3 box; every surface's normal points into the room.
    """
    sx, sy, sz = spec.size
    materials: dict[tuple[str, float], str] = {}

    def mat(name: str, thickness: float) -> str:
        return materials.setdefault((name, thickness), f"mat-{name}-{len(materials)}")

    floor = mat(spec.floor_material, spec.ceiling_thickness)
    ceiling = mat(spec.ceiling_material, spec.ceiling_thickness)
    wall = mat(spec.wall_material, spec.wall_thickness)

    def rect(
        sid: str, scale: tuple[float, float], rotate: str, at: tuple[float, float, float], m: str
    ) -> str:
        return (
            f'<shape type="rectangle" id="{sid}"><transform name="to_world">'
            f'<scale x="{_f(scale[0])}" y="{_f(scale[1])}" z="1"/>{rotate}'
            f'<translate x="{_f(at[0])}" y="{_f(at[1])}" z="{_f(at[2])}"/></transform>'
            f'<ref id="{m}" name="bsdf"/></shape>'
        )

    shapes = [
        rect("floor", (sx / 2, sy / 2), "", (sx / 2, sy / 2, 0.0), floor),
        rect(
            "ceiling",
            (sx / 2, sy / 2),
            '<rotate x="1" angle="180"/>',
            (sx / 2, sy / 2, sz),
            ceiling,
        ),
        rect(
            "wall-west", (sz / 2, sy / 2), '<rotate y="1" angle="90"/>', (0.0, sy / 2, sz / 2), wall
        ),
        rect(
            "wall-east", (sz / 2, sy / 2), '<rotate y="1" angle="-90"/>', (sx, sy / 2, sz / 2), wall
        ),
        rect(
            "wall-south",
            (sx / 2, sz / 2),
            '<rotate x="1" angle="-90"/>',
            (sx / 2, 0.0, sz / 2),
            wall,
        ),
        rect(
            "wall-north", (sx / 2, sz / 2), '<rotate x="1" angle="90"/>', (sx / 2, sy, sz / 2), wall
        ),
    ]
    for ob in spec.obstacles:
        half = [(hi - lo) / 2 for lo, hi in zip(ob.min, ob.max, strict=True)]
        centre = [(hi + lo) / 2 for lo, hi in zip(ob.min, ob.max, strict=True)]
        m = mat(ob.material, min(0.05, 2 * min(half)))
        # Mitsuba applies the transforms in order: scale the unit cube, turn it about z, move it.
        yaw = f'<rotate z="1" angle="{_f(ob.yaw_deg)}"/>' if ob.yaw_deg else ""
        shapes.append(
            f'<shape type="cube" id="obstacle-{ob.name}"><transform name="to_world">'
            f'<scale x="{_f(half[0])}" y="{_f(half[1])}" z="{_f(half[2])}"/>{yaw}'
            f'<translate x="{_f(centre[0])}" y="{_f(centre[1])}" z="{_f(centre[2])}"/></transform>'
            f'<ref id="{m}" name="bsdf"/></shape>'
        )
    bsdfs = [
        f'<bsdf type="itu-radio-material" id="{mid}"><string name="type" value="{name}"/>'
        f'<float name="thickness" value="{_f(thickness)}"/></bsdf>'
        for (name, thickness), mid in materials.items()
    ]
    return '<scene version="2.1.0">\n' + "\n".join(bsdfs + shapes) + "\n</scene>"


# --- solver -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolverConfig:
    """Path-solver settings; defaults: depth 3 and 1e5 rays converge at 1.272 GHz indoors."""

    max_depth: int = 3
    samples_per_src: int = 100_000
    max_paths_per_src: int = 5_000_000
    """Also sizes the solver's path de-duplication hash table. At the solver's default (1e6)
    colliding paths are dropped in a thread-order dependent way: ~2 % of positions differed
    by a few percent between identical runs; at 5e6 they agree to ~2e-5 (peak RSS ~0.8 GB)."""
    bs_pattern: str = "tr38901"
    """Directional patch-like element pattern, so an array's facing matters."""
    seed: int = 42
    refraction: bool = False
    """Transmission through surfaces (thin slabs). Off: in a closed hall it costs ~3x the
    rays for nothing; inner walls are then opaque (docs/data.md: multi-room floors)."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= 8:
            raise ValueError(f"max_depth: expected 1..8 reflections, got {self.max_depth}")
        if self.samples_per_src < 1000:
            raise ValueError(f"samples_per_src: expected >= 1000 rays, got {self.samples_per_src}")
        if self.max_paths_per_src < 1_000_000:
            raise ValueError(
                f"max_paths_per_src: expected >= 1e6 (it sizes the de-duplication table), "
                f"got {self.max_paths_per_src}"
            )
        if self.bs_pattern not in {"tr38901", "iso", "dipole", "hw_dipole"}:
            raise ValueError(
                f"bs_pattern: expected tr38901, iso, dipole or hw_dipole, got {self.bs_pattern!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """All settings, for the output file's `source` attribute."""
        return asdict(self)


FIRST_PATH_THRESHOLD_DB = 20.0
"""A receiver that synchronises to the first arriving path detects the earliest path
within this many dB of the strongest one (weaker early paths drown in the noise)."""


@dataclass(frozen=True)
class BSRadio:
    """How one BS's radio differs from the nominal one (domain randomisation of the chain).

    The defaults are the nominal radio: the solver's `bs_pattern`, the schema's carrier
    and the array facing exactly its `look_at`.
    """

    pattern: str | None = None
    """Element pattern of the 4x2 array (tr38901, iso, dipole, hw_dipole); None: the solver's."""
    carrier_hz: float | None = None
    """Carrier the channel is traced at; None: the schema's 1.272 GHz."""
    orientation_jitter_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """(yaw, pitch, roll) added to the array's look-at orientation: a mount that is a bit off."""


@dataclass
class TraceResult:
    """Noise-free channels of one batch of UE positions to one base station."""

    cfr: npt.NDArray[np.complex64]
    """[n, 8, 103]: antenna x subcarrier, baseband around the carrier."""
    los: npt.NDArray[np.bool_]
    """[n]: the solver found the direct path."""
    first_delay_s: npt.NDArray[np.float64] | None = None
    """[n]: delay of the first detectable path (FIRST_PATH_THRESHOLD_DB); 0 where none."""


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class RayTracer:
    """One loaded scene; traces UE positions to any of its base stations."""

    def __init__(self, spec: SceneSpec, config: SolverConfig | None = None) -> None:
        self.spec = spec
        self.config = config or SolverConfig()
        rt = load_sionna()
        self._rt = rt
        import mitsuba as mi

        self._mi = mi
        from training.data.schema import CARRIER_HZ

        self._scene = rt.load_scene_from_string(scene_xml(spec))
        self._scene.frequency = CARRIER_HZ
        # 4x2 URA at half-wavelength: 4 rows (vertical) x 2 columns, vertical polarisation.
        self._scene.tx_array = rt.PlanarArray(
            num_rows=4, num_cols=2, pattern=self.config.bs_pattern, polarization="V"
        )
        self._scene.rx_array = rt.PlanarArray(
            num_rows=1, num_cols=1, pattern="iso", polarization="V"
        )
        self._solver = rt.PathSolver()
        self._n_rx = 0
        self._bs_key: tuple[int, BSRadio] | None = None
        self._pattern = self.config.bs_pattern
        self._freqs = subcarrier_offsets_hz()

    def _point(self, p: npt.ArrayLike) -> Any:
        x, y, z = (float(v) for v in np.asarray(p, dtype=np.float64))
        return self._mi.Point3f(x, y, z)

    def _use_bs(self, index: int, radio: BSRadio) -> None:
        if self._bs_key == (index, radio):
            return
        from training.data.schema import CARRIER_HZ

        if self._bs_key is not None:
            self._scene.remove("bs")
        pattern = radio.pattern or self.config.bs_pattern
        if pattern != self._pattern:
            self._scene.tx_array = self._rt.PlanarArray(
                num_rows=4, num_cols=2, pattern=pattern, polarization="V"
            )
            self._pattern = pattern
        carrier = radio.carrier_hz or CARRIER_HZ
        if float(self._scene.frequency[0]) != carrier:
            self._scene.frequency = carrier
        bs = self.spec.base_stations[index]
        tx = self._rt.Transmitter(
            name="bs",
            position=self._point(bs.position),
            look_at=self._point(self.spec.look_at(bs)),
        )
        if any(radio.orientation_jitter_deg):
            yaw, pitch, roll = (math.radians(v) for v in radio.orientation_jitter_deg)
            tx.orientation = tx.orientation + self._mi.Point3f(yaw, pitch, roll)
        self._scene.add(tx)
        self._bs_key = (index, radio)

    def _place_receivers(self, positions: npt.NDArray[np.float64]) -> None:
        n = len(positions)
        while self._n_rx > n:
            self._n_rx -= 1
            self._scene.remove(f"ue{self._n_rx}")
        for i, p in enumerate(positions):
            if i < self._n_rx:
                self._scene.get(f"ue{i}").position = self._point(p)
            else:
                self._scene.add(self._rt.Receiver(name=f"ue{i}", position=self._point(p)))
        self._n_rx = n

    def trace(
        self,
        bs_index: int,
        positions: npt.ArrayLike,
        on_chunk: Callable[[int], None] | None = None,
        radio: BSRadio | None = None,
    ) -> TraceResult:
        """Channels from base station `bs_index` to each UE position [n, 3] (metres).

        Receivers go to the solver MAX_RECEIVERS_PER_CALL at a time (more silently drop paths);
        `on_chunk(k)` is called after each chunk of k positions. `radio` perturbs the BS's
        pattern, carrier and orientation (default: the nominal radio).
        """
        pos = np.asarray(positions, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise ValueError(f"positions: expected shape [n, 3] in metres, got {pos.shape}")
        if not 0 <= bs_index < len(self.spec.base_stations):
            raise ValueError(
                f"bs_index: expected 0..{len(self.spec.base_stations) - 1}, got {bs_index}"
            )
        self._use_bs(bs_index, radio or BSRadio())
        cfr = np.zeros((len(pos), N_ANTENNAS, N_SUBCARRIERS), dtype=np.complex64)
        los = np.zeros(len(pos), dtype=bool)
        first = np.zeros(len(pos), dtype=np.float64)
        for chunk in _chunks(len(pos), MAX_RECEIVERS_PER_CALL):
            cfr[chunk], los[chunk], first[chunk] = self._solve(pos[chunk])
            if on_chunk is not None:
                on_chunk(chunk.stop - chunk.start)
        return TraceResult(cfr=cfr, los=los, first_delay_s=first)

    def _solve(
        self, positions: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.complex64], npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        self._place_receivers(positions)
        paths = self._solver(
            self._scene,
            max_depth=self.config.max_depth,
            samples_per_src=self.config.samples_per_src,
            max_num_paths_per_src=self.config.max_paths_per_src,
            synthetic_array=True,
            los=True,
            specular_reflection=True,
            diffuse_reflection=False,
            refraction=self.config.refraction,  # off in closed rooms: 3x the rays for nothing
            diffraction=False,
            edge_diffraction=False,  # leaks energy into closed boxes with built-in shapes
            seed=self.config.seed,
        )
        # a: [rx, rx_ant=1, tx=1, tx_ant=8, paths, time=1] baseband coefficients;
        # tau: [rx, tx=1, paths]
        a, tau = paths.cir(normalize_delays=False, out_type="numpy")
        a = np.asarray(a)[:, 0, 0, :, :, 0].astype(np.complex128)
        tau = np.asarray(tau, dtype=np.float64)[:, 0, :]
        valid = np.asarray(paths.valid.numpy(), dtype=bool)[:, 0, :]
        inter = np.asarray(paths.interactions.numpy())[:, :, 0, :]
        los = np.any(valid & np.all(inter == 0, axis=0), axis=1)
        # Sum in a fixed order (by delay, invalid paths last and zeroed) so the result does not
        # depend on the order in which the solver happened to emit paths.
        a = np.where(valid[:, None, :], a, 0.0)
        order = np.argsort(np.where(valid, tau, np.inf), axis=1, kind="stable")
        tau = np.take_along_axis(np.where(valid, tau, 0.0), order, axis=1)
        a = np.take_along_axis(a, order[:, None, :], axis=2)
        phase = np.exp(-2j * np.pi * tau[:, None, :] * self._freqs[:, None])  # [rx, sc, paths]
        cfr = np.einsum("rap,rsp->ras", a, phase)
        return cfr.astype(np.complex64), los, _first_detectable_delay(a, tau)


def _first_detectable_delay(
    a: npt.NDArray[np.complex128], tau: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Per receiver, the smallest delay of a path within FIRST_PATH_THRESHOLD_DB of the strongest.

    `a` [rx, antennas, paths] (zero for invalid paths), `tau` [rx, paths]; 0 where no path.
    """
    if a.shape[-1] == 0:  # a chunk in which no receiver has any path (the solver keeps none)
        return np.zeros(a.shape[0])
    power = np.mean(np.abs(a) ** 2, axis=1)  # [rx, paths]
    peak = power.max(axis=1, keepdims=True)
    strong = (power > 0) & (power >= peak * 10 ** (-FIRST_PATH_THRESHOLD_DB / 10))
    first = np.where(strong, tau, np.inf).min(axis=1)
    return np.where(np.isfinite(first), first, 0.0)
