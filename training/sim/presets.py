"""Dataset sizes: `tiny` for tests and demos (seconds), `paper` in the spirit of Table I."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from training.sim.raytrace import SolverConfig
from training.sim.scene import SceneSpec


@dataclass(frozen=True)
class Preset:
    """How many UE positions to trace and with which solver settings.

    Multi-BS sites (like `industrial`) are the source environments of meta-learning
    and get `source_positions`; single-BS sites are targets and get `target_positions`.
    """

    name: str
    source_positions: int
    target_positions: int
    solver: SolverConfig

    def positions_for(self, spec: SceneSpec) -> int:
        """UE positions for one site (shared by all of its base stations)."""
        return self.source_positions if len(spec.base_stations) > 1 else self.target_positions

    def to_dict(self) -> dict[str, Any]:
        """All settings, for the output file's `source` attribute."""
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", source_positions=300, target_positions=300, solver=SolverConfig()),
    "paper": Preset(
        "paper", source_positions=20_000, target_positions=15_000, solver=SolverConfig()
    ),
}


def get_preset(name: str) -> Preset:
    """A preset by name, with an error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}") from None
