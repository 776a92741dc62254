"""Constants of the fingerprint schema (design.md, "Data") and the error type its readers raise.

Every part of csipos (simulator, importer, nets, ONNX export, service) takes its
shapes from here, so there is one place that says what a fingerprint is.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
"""Written to the root attrs of every fingerprint file; readers refuse other versions."""

N_ANTENNAS = 8
"""Antennas of the base-station array: a 4x2 URA at half-wavelength spacing."""

ARRAY_LAYOUT = "4x2"
N_SUBCARRIERS = 103
"""Pilot subcarriers: every 10th of 1024 over 50 MHz."""

CSI_SHAPE: tuple[int, int, int] = (N_ANTENNAS, N_SUBCARRIERS, 2)
"""One fingerprint: [antenna, subcarrier, (real, imag)], float32."""

CARRIER_HZ = 1.272e9
BANDWIDTH_HZ = 50e6
FFT_SIZE = 1024
SUBCARRIER_STRIDE = 10
SUBCARRIER_SPACING_HZ = SUBCARRIER_STRIDE * BANDWIDTH_HZ / FFT_SIZE
"""Spacing between the stored pilot subcarriers (every 10th FFT bin)."""

REQUIRED_GROUP_ATTRS = (
    "carrier_hz",
    "subcarrier_spacing_hz",
    "array",
    "bs_position",
    "description",
    "source",
)


class SchemaError(ValueError):
    """A fingerprint file or array does not follow the schema.

    The message always names the file, the group and the field, and says what
    was expected, so a user can fix the data without reading our code.
    """

    def __init__(self, path: str, group: str, field: str, problem: str) -> None:
        self.path = path
        self.group = group
        self.field = field
        self.problem = problem
        super().__init__(f"{path}: group '{group}', field '{field}': {problem}")
