"""Input representations of the CSI, applied inside the backbone (so training, the exported
ONNX graph and the service can never disagree).

Real sounders, our simulator and any new site apply nuisances to every sample that carry
no position information: a random common phase (oscillator phase), and a timing offset
that shows up as a linear phase ramp over the subcarriers. A backbone that sees them has
to learn to ignore them from data; one that never sees them cannot lean on them. The
transfer pilots (`shared/notes/transfer-pilots.md`) measured scratch on a held-out
office at 500 labels: raw 1.33 m, common phase removed 1.13 m, timing ramp and common
phase removed 1.10 m.

- ``raw``: the CSI as stored (the paper's input).
- ``phase``: multiply every element by ``conj(r) / |r|``, ``r`` the sample's strongest
  element: exactly invariant to a common phase.
- ``phase-delay``: first remove the per-sample phase slope over subcarriers (the angle of
  ``sum_{a,k} H[a,k+1] conj(H[a,k])``, applied as ``exp(-j s (k - K/2))``), then the
  common phase: also invariant to a timing offset. It also removes the absolute delay,
  a cue the simulator has and receivers synchronised to the first path lack.

Everything is real arithmetic on the [B, antennas, subcarriers, 2] tensor (no complex
dtype), so the TorchScript ONNX exporter handles it.
"""

from __future__ import annotations

from typing import Literal

import torch

InputName = Literal["raw", "phase", "phase-delay"]
INPUTS: tuple[InputName, ...] = ("raw", "phase", "phase-delay")


def remove_common_phase(csi: torch.Tensor) -> torch.Tensor:
    """Rotate each sample so its strongest element is real and positive."""
    re, im = csi[..., 0], csi[..., 1]
    flat_power = (re.square() + im.square()).flatten(1)
    idx = flat_power.argmax(dim=1, keepdim=True)
    c = re.flatten(1).gather(1, idx)
    d = im.flatten(1).gather(1, idx)
    norm = (c.square() + d.square()).sqrt().clamp_min(1e-30)
    c = (c / norm).reshape(-1, 1, 1)
    d = (d / norm).reshape(-1, 1, 1)
    # (re + i im) * (c - i d)
    return torch.stack((re * c + im * d, im * c - re * d), dim=-1)


def delay_slope(csi: torch.Tensor) -> torch.Tensor:
    """Each sample's mean phase slope over subcarriers [B], radians per subcarrier: minus
    2 pi times the subcarrier spacing times its power-weighted mean delay (the timing
    offset where the receiver's clock is random, the time of arrival where it is not)."""
    re, im = csi[..., 0], csi[..., 1]
    # z = sum over antennas and subcarriers of H[k+1] * conj(H[k])
    a1, b1, a0, b0 = re[..., 1:], im[..., 1:], re[..., :-1], im[..., :-1]
    z_re = (a1 * a0 + b1 * b0).flatten(1).sum(dim=1)
    z_im = (b1 * a0 - a1 * b0).flatten(1).sum(dim=1)
    return torch.atan2(z_im, z_re)


def remove_delay_ramp(csi: torch.Tensor) -> torch.Tensor:
    """Remove each sample's mean phase slope over subcarriers (a timing offset)."""
    re, im = csi[..., 0], csi[..., 1]
    slope = delay_slope(csi)
    k = torch.arange(csi.shape[2], dtype=csi.dtype, device=csi.device) - (csi.shape[2] // 2)
    theta = -slope.reshape(-1, 1, 1) * k.reshape(1, 1, -1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    return torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)


def apply_inputs(csi: torch.Tensor, inputs: InputName) -> torch.Tensor:
    """The representation ``inputs`` of ``csi`` [B, antennas, subcarriers, 2]."""
    if inputs == "raw":
        return csi
    if inputs == "phase-delay":
        csi = remove_delay_ramp(csi)
    return remove_common_phase(csi)
