"""Input representations: exact invariances, and the same numbers in the exported ONNX graph."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.training.toychannel import toy_fingerprints
from training.export import export_site_model
from training.inputs import apply_inputs, delay_slope, remove_common_phase, remove_delay_ramp
from training.nets import Backbone, BackboneConfig, Head, SiteModel


def complex_of(csi: torch.Tensor) -> torch.Tensor:
    return torch.complex(csi[..., 0].double(), csi[..., 1].double())


def real_of(h: torch.Tensor) -> torch.Tensor:
    return torch.stack((h.real, h.imag), dim=-1).float()


CSI = torch.from_numpy(toy_fingerprints(16, (2.0, 1.0), seed=3).csi)


def nuisance(csi: torch.Tensor, phase: torch.Tensor, delay_rad: torch.Tensor) -> torch.Tensor:
    """A common phase and a timing offset (a phase ramp over subcarriers) per sample."""
    h = complex_of(csi)
    k = torch.arange(h.shape[2], dtype=torch.float64)
    ramp = torch.exp(1j * (phase[:, None, None] + delay_rad[:, None, None] * k[None, None, :]))
    return real_of(h * ramp)


def test_common_phase_removal_is_exactly_invariant_and_keeps_magnitudes() -> None:
    gen = torch.Generator().manual_seed(0)
    phase = torch.rand(len(CSI), generator=gen, dtype=torch.float64) * 2 * math.pi
    shifted = nuisance(CSI, phase, torch.zeros(len(CSI), dtype=torch.float64))
    a, b = remove_common_phase(CSI), remove_common_phase(shifted)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(complex_of(a).abs(), complex_of(CSI).abs(), atol=1e-6)
    # the strongest element ends real and positive
    h = complex_of(a).flatten(1)
    strongest = h.gather(1, h.abs().argmax(dim=1, keepdim=True))
    assert torch.all(strongest.imag.abs() < 1e-6) and torch.all(strongest.real > 0)


def test_delay_ramp_removal_is_invariant_to_timing_offsets() -> None:
    gen = torch.Generator().manual_seed(1)
    phase = torch.rand(len(CSI), generator=gen, dtype=torch.float64) * 2 * math.pi
    delay = (torch.rand(len(CSI), generator=gen, dtype=torch.float64) - 0.5) * 0.2
    shifted = nuisance(CSI, phase, delay)
    a = apply_inputs(CSI, "phase-delay")
    b = apply_inputs(shifted, "phase-delay")
    assert torch.allclose(a, b, atol=1e-4)
    # without the ramp removal the timing offset survives
    assert not torch.allclose(apply_inputs(CSI, "phase"), apply_inputs(shifted, "phase"), atol=1e-2)
    assert torch.equal(apply_inputs(CSI, "raw"), CSI)
    assert torch.allclose(
        complex_of(remove_delay_ramp(CSI)).abs(), complex_of(CSI).abs(), atol=1e-6
    )


@pytest.mark.parametrize("inputs", ["phase", "phase-delay"])
def test_representation_is_part_of_the_exported_model(inputs: str, tmp_path: Path) -> None:
    backbone = Backbone(BackboneConfig(inputs=inputs), seed=0)  # type: ignore[arg-type]
    head = Head(loss="nll", seed=1)
    model = SiteModel(backbone, head).eval()
    path = tmp_path / "m.onnx"
    export_site_model(model, path, site="lab", version="v1", backbone_ref="b:v1")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"csi": CSI.numpy()})
    with torch.no_grad():
        pos, sigma = model(CSI)
    assert sigma is not None
    np.testing.assert_allclose(got[0], pos.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got[1], sigma.numpy(), atol=1e-4, rtol=1e-4)


def test_unknown_representation_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid inputs 'delay'"):
        BackboneConfig(inputs="delay")  # type: ignore[arg-type]


def test_delay_slope_reads_a_timing_offset_in_radians_per_subcarrier() -> None:
    zero = torch.zeros(len(CSI), dtype=torch.float64)
    delay = torch.linspace(-0.1, 0.1, len(CSI), dtype=torch.float64)
    before = delay_slope(CSI).double()
    after = delay_slope(nuisance(CSI, zero, delay)).double()
    np.testing.assert_allclose((after - before).numpy(), delay.numpy(), atol=1e-5)
    # and the ramp removal leaves none
    assert delay_slope(remove_delay_ramp(CSI)).abs().max() < 1e-5
