"""The two-part positioning model f = g(phi(H)): a site-independent backbone, a per-site head.

Sizes (paper: backbone 152,640, head 33,282 with 2 outputs, 185,922 in all).
The input [B, 8, 103, 2] is permuted to channels-first [B, 2, 8, 103]
(real/imag are the channels, antenna x subcarrier the image). Every conv is
5x5 with padding 2 ("same"), every pool 2x2 average with floor::

    block 1: conv 2->40  [40, 8, 103] -> pool [40, 4, 51] -> conv 40->16 [16, 4, 51]
    block 2: conv 16->40 [40, 4, 51]  -> pool [40, 2, 25] -> conv 40->16 [16, 2, 25]
    flatten 16 * 2 * 25 = 800 -> Dense(128)

    convs: (2*40 + 40*16 + 16*40 + 40*16) * 25 weights + (40+16+40+16) biases
         = 50,000 + 112 = 50,112
    dense: 800 * 128 + 128 = 102,528             backbone total 152,640
    head:  2 * (128 * 128 + 128) + 128 * 2 + 2 = 33,282  (out = 4: 33,540)

Activations are ELU: with a frozen backbone and a few hundred target samples,
ReLU units that die during head-only training cannot recover, while ELU keeps
a gradient everywhere; its smoothness also suits the NLL loss.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.config import LossName
from training.data.schema import CSI_SHAPE
from training.inputs import INPUTS, InputName, apply_inputs

log = logging.getLogger(__name__)

Activation = Literal["elu", "relu"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"elu": nn.ELU, "relu": nn.ReLU}


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"invalid {what} {value!r}: expected one of {', '.join(choices)}")


@dataclass(frozen=True)
class BackboneConfig:
    """Shape of the backbone; the defaults give the paper's 152,640 parameters."""

    block_channels: tuple[tuple[int, int], ...] = ((40, 16), (40, 16))
    """Per pooling block: (channels of the first conv, channels of the second conv)."""
    kernel_size: int = 5
    features: int = 128
    activation: Activation = "elu"
    input_shape: tuple[int, int, int] = CSI_SHAPE
    inputs: InputName = "raw"
    """Input representation applied in the model (`training.inputs`): raw (the paper's),
    phase (common phase removed) or phase-delay (timing ramp and common phase removed)."""

    def __post_init__(self) -> None:
        _check_choice(self.activation, tuple(_ACTIVATIONS), "activation")
        _check_choice(self.inputs, INPUTS, "inputs")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {self.kernel_size}")
        if self.features < 1 or not self.block_channels:
            raise ValueError("features must be >= 1 and block_channels non-empty")
        if any(c < 1 for block in self.block_channels for c in block):
            raise ValueError(f"block_channels must be positive, got {self.block_channels}")
        object.__setattr__(
            self, "block_channels", tuple(tuple(int(c) for c in b) for b in self.block_channels)
        )
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if len(self.input_shape) != 3 or self.input_shape[2] != 2:
            raise ValueError(
                f"input_shape must be (antennas, subcarriers, 2), got {self.input_shape}"
            )

    def spatial_out(self) -> tuple[int, int]:
        """(height, width) after the pooling blocks: each pool halves with floor."""
        h, w = self.input_shape[0], self.input_shape[1]
        for _ in self.block_channels:
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(
                f"input {self.input_shape} too small for {len(self.block_channels)} pools"
            )
        return h, w


@dataclass(frozen=True)
class HeadConfig:
    """Shape and loss of a site head; the defaults give 33,282 parameters (mse)."""

    loss: LossName = "mse"
    in_features: int = 128
    hidden: tuple[int, ...] = field(default=(128, 128))
    activation: Activation = "elu"
    sigma_floor: float = 1e-3
    """Smallest sigma in normalised units (fraction of the site's position scale).

    Relative, not absolute, so the NLL (computed in normalised units) is bounded
    below the same way on a 10 m lab and a 500 m campus: 1 cm and 0.5 m there.
    """
    members: int = 1
    """MLPs averaged into one Gaussian (`Head.ensemble`); 1 is the plain head. Heads that
    differ only in initialisation and batch order disagree by ~10 % of their error on a
    few hundred labels, and their mean removes that part (docs/results/site-trust/joint)."""

    def __post_init__(self) -> None:
        _check_choice(self.loss, ("mse", "nll"), "loss")
        if isinstance(self.members, bool) or not isinstance(self.members, int) or self.members < 1:
            raise ValueError(f"members must be a positive integer, got {self.members!r}")
        _check_choice(self.activation, tuple(_ACTIVATIONS), "activation")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.in_features < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(f"layer sizes must be positive, got {self.in_features}, {self.hidden}")
        if not (math.isfinite(self.sigma_floor) and self.sigma_floor > 0):
            raise ValueError(f"sigma_floor must be a positive number, got {self.sigma_floor}")

    @property
    def out(self) -> int:
        """Raw outputs: x, y (mse) or x, y, sigma_x, sigma_y (nll)."""
        return 2 if self.loss == "mse" else 4


def _exporting() -> bool:
    return bool(torch.onnx.is_in_onnx_export())


def normalise_power(csi: torch.Tensor) -> torch.Tensor:
    """Scale each sample to unit mean power, so a site's gain or the UE's transmit power
    does not matter. Site independent, hence inside the model (training, ONNX and the
    service cannot disagree). Divides by the peak first so tiny or huge inputs do not
    under/overflow in float32; an all-zero sample stays zero.
    """
    flat = csi.reshape(csi.shape[0], -1)
    peak = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    flat = flat / peak
    rms = flat.square().mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    return (flat / rms).reshape(csi.shape)


class Backbone(nn.Module):
    """phi: CSI [B, 8, 103, 2] (channels-last, as stored) -> features [B, 128]."""

    def __init__(self, config: BackboneConfig | None = None, *, seed: int | None = None) -> None:
        super().__init__()
        self.config = config = config or BackboneConfig()
        act = _ACTIVATIONS[config.activation]
        pad = config.kernel_size // 2
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            layers: list[nn.Module] = []
            channels = config.input_shape[2]
            for first, second in config.block_channels:
                layers += [
                    nn.Conv2d(channels, first, config.kernel_size, padding=pad),
                    act(),
                    nn.AvgPool2d(2, ceil_mode=False),
                    nn.Conv2d(first, second, config.kernel_size, padding=pad),
                    act(),
                ]
                channels = second
            h, w = config.spatial_out()
            self.blocks = nn.Sequential(*layers)
            self.dense = nn.Linear(channels * h * w, config.features)
            self.act = act()

    def forward(self, csi: torch.Tensor) -> torch.Tensor:
        if not _exporting() and (csi.dim() != 4 or tuple(csi.shape[1:]) != self.config.input_shape):
            raise ValueError(
                f"backbone input must be [batch, {', '.join(map(str, self.config.input_shape))}]"
                f" (antenna, subcarrier, real/imag), got {list(csi.shape)}"
            )
        x = apply_inputs(normalise_power(csi), self.config.inputs).permute(0, 3, 1, 2)
        x = self.blocks(x).flatten(1)
        features: torch.Tensor = self.act(self.dense(x))
        return features

    def with_fresh_dense(self, seed: int) -> Backbone:
        """A copy with the ``dense`` layer (two thirds of the paper's weights) drawn afresh
        from ``seed`` and the convolutions kept. With thousands of target labels the
        source ``dense`` layer is a bias: re-learning it gave 0.94x plain fine-tuning's
        error at 3,000 labels (docs/results/transfer, "Which layers transfer")."""
        out = copy.deepcopy(self)
        out.dense.load_state_dict(Backbone(self.config, seed=seed).dense.state_dict())
        return out


REF_NEIGHBOURS = 5
"""Nearest labelled fingerprints behind a head's neighbour terms (`Head`): their weighted
position is blended in, their mean feature distance widens sigma."""


def reference_neighbours(
    features: torch.Tensor, reference: torch.Tensor, neighbours: int = REF_NEIGHBOURS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Euclidean distances [B, k] from each of ``features`` [B, F] to its ``neighbours``
    (k <= M) nearest rows of ``reference`` [M, F], and their row indices [B, k]. A matmul
    and TopK (no cdist), so that it exports to ONNX; both sides centred on the reference's
    mean first, so that the float32 expansion keeps the small distances that matter."""
    centre = reference.mean(dim=0)
    f, r = features - centre, reference - centre
    d2 = f.square().sum(dim=1, keepdim=True) + r.square().sum(dim=1) - 2.0 * f @ r.t()
    near, index = torch.topk(d2, neighbours, dim=1, largest=False)
    return near.clamp_min(1e-12).sqrt(), index


def log_reference_distance(
    features: torch.Tensor, reference: torch.Tensor, neighbours: int = REF_NEIGHBOURS
) -> torch.Tensor:
    """log of the mean distance to the nearest rows (`reference_neighbours`): [B]."""
    return reference_neighbours(features, reference, neighbours)[0].mean(dim=1).log()


def neighbour_position(
    distance: torch.Tensor, index: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """The inverse-distance weighted mean [B, 2] of the ``positions`` [M, 2] of the rows
    ``index`` [B, k] at ``distance`` [B, k] (`reference_neighbours`). The distances are
    softened by a tenth of their mean, so that an exact match weighs ~10x a typical
    neighbour, not by float noise."""
    weights = 1.0 / (distance + 0.1 * distance.mean(dim=1, keepdim=True))
    weights = weights / weights.sum(dim=1, keepdim=True)
    return (positions[index] * weights.unsqueeze(2)).sum(dim=1)


def _unit_sigma(raw: torch.Tensor, config: HeadConfig) -> torch.Tensor:
    """The sigma link of every head, in normalised units: softplus of the raw outputs plus
    the floor (`Head`, its ensembles and `BatchedHeads` must agree)."""
    return F.softplus(raw) + config.sigma_floor


class Head(nn.Module):
    """g: features [B, 128] -> position [B, 2] in metres and, for nll, sigma [B, 2] in metres.

    The network works in normalised units (positions centred on ``pos_mean`` and
    divided by ``pos_scale``, the site's training positions); the buffers are saved
    with the head, so its outputs are always metres. With ``config.members`` > 1 it is
    an ensemble: ``mlp`` holds one MLP per member, and the output is their Gaussians'
    moments (mean of the means; variance the mean variance plus the means' spread).

    After calibration (`training.calibration`) sigma is multiplied by ``sigma_scale``.
    When ``ref_features`` holds the site's labelled fingerprints' features (and
    ``ref_positions`` their positions), two more terms use the `REF_NEIGHBOURS` nearest of
    them: the position moves ``ref_blend`` of the way to their inverse-distance weighted
    mean (a k-NN fingerprinting estimate in the backbone's feature space), and sigma is
    multiplied by ``exp(ref_weight * (log d - ref_centre))``, d their mean distance: a
    fingerprint unlike every labelled one is where the head interpolates, and its error is
    larger than the head's sigma says.
    """

    pos_mean: torch.Tensor
    pos_scale: torch.Tensor
    sigma_scale: torch.Tensor
    ref_features: torch.Tensor
    ref_positions: torch.Tensor
    ref_blend: torch.Tensor
    ref_weight: torch.Tensor
    ref_centre: torch.Tensor

    def __init__(
        self,
        config: HeadConfig | None = None,
        *,
        loss: LossName | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        config = config or HeadConfig()
        if loss is not None:
            config = dataclasses.replace(config, loss=loss)
        self.config = config
        act = _ACTIVATIONS[config.activation]
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)

            def mlp() -> nn.Sequential:
                layers: list[nn.Module] = []
                width = config.in_features
                for hidden in config.hidden:
                    layers += [nn.Linear(width, hidden), act()]
                    width = hidden
                layers.append(nn.Linear(width, config.out))
                return nn.Sequential(*layers)

            self.mlp: nn.Sequential | nn.ModuleList = (
                mlp()
                if config.members == 1
                else nn.ModuleList(mlp() for _ in range(config.members))
            )
        self.register_buffer("pos_mean", torch.zeros(2))
        self.register_buffer("pos_scale", torch.ones(1))
        # Per-axis factor on sigma, fitted on validation data after training
        # (`training.calibration`); ones = sigma as trained.
        self.register_buffer("sigma_scale", torch.ones(2))
        # The neighbour terms (class docstring); no rows = off.
        self.register_buffer("ref_features", torch.zeros(0, config.in_features))
        self.register_buffer("ref_positions", torch.zeros(0, 2))
        self.register_buffer("ref_blend", torch.zeros(1))
        self.register_buffer("ref_weight", torch.zeros(1))
        self.register_buffer("ref_centre", torch.zeros(1))
        self._reference_rows = 0  # a Python int: the ONNX tracer cannot branch on a shape

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Heads saved before sigma calibration (or the neighbour terms) existed: uncalibrated.
        state_dict.setdefault(prefix + "sigma_scale", torch.ones(2))
        ref = state_dict.setdefault(prefix + "ref_features", self.ref_features.new_zeros(0, 0))
        if ref.dim() == 2 and ref.shape[0] == 0:
            state_dict[prefix + "ref_features"] = self.ref_features.new_zeros(
                0, self.config.in_features
            )
        elif ref.dim() == 2 and ref.shape[1] == self.config.in_features:
            self.ref_features = torch.empty_like(ref)  # the site's row count
        rows = int(state_dict[prefix + "ref_features"].shape[0])
        positions = state_dict.setdefault(prefix + "ref_positions", torch.zeros(rows, 2))
        if positions.shape != self.ref_positions.shape and positions.shape == (rows, 2):
            self.ref_positions = torch.empty_like(positions)
        self._reference_rows = rows
        state_dict.setdefault(prefix + "ref_blend", torch.zeros(1))
        state_dict.setdefault(prefix + "ref_weight", torch.zeros(1))
        state_dict.setdefault(prefix + "ref_centre", torch.zeros(1))
        super()._load_from_state_dict(state_dict, prefix, *args)

    @torch.no_grad()
    def reset_calibration(self) -> None:
        """The head as trained: no factor, no neighbour terms."""
        self.sigma_scale.fill_(1.0)
        self.set_reference(None)

    @torch.no_grad()
    def set_reference(
        self,
        features: torch.Tensor | None,
        positions: torch.Tensor | None = None,
        *,
        blend: float = 0.0,
        weight: float = 0.0,
        centre: float = 0.0,
    ) -> None:
        """Turn the neighbour terms on with ``features`` [M >= 1, in_features] (the
        labelled fingerprints' backbone features) and their ``positions`` [M, 2] (metres),
        or off with None."""
        if features is None:
            self.ref_features = self.ref_features.new_zeros(0, self.config.in_features)
            self.ref_positions = self.ref_positions.new_zeros(0, 2)
            blend = weight = centre = 0.0
        else:
            if features.dim() != 2 or features.shape[1] != self.config.in_features:
                raise ValueError(
                    f"reference features must be [M, {self.config.in_features}], "
                    f"got {list(features.shape)}"
                )
            if features.shape[0] < 1 or not torch.isfinite(features).all():
                raise ValueError("reference features must be one or more finite rows")
            if positions is None or tuple(positions.shape) != (features.shape[0], 2):
                raise ValueError(f"reference positions must be [{features.shape[0]}, 2]")
            if not torch.isfinite(positions).all():
                raise ValueError("reference positions must be finite")
            self.ref_features = features.detach().to(self.sigma_scale).clone()
            self.ref_positions = positions.detach().to(self.sigma_scale).clone()
        self._reference_rows = 0 if features is None else int(features.shape[0])
        self.ref_blend.fill_(blend)
        self.ref_weight.fill_(weight)
        self.ref_centre.fill_(centre)

    def _finish(
        self, position: torch.Tensor, sigma: torch.Tensor | None, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The neighbour terms (when on) and the calibration factor on sigma."""
        if self._reference_rows:
            k = min(REF_NEIGHBOURS, self._reference_rows)
            distance, index = reference_neighbours(features, self.ref_features, k)
            nearby = neighbour_position(distance, index, self.ref_positions)
            position = position + self.ref_blend * (nearby - position)
            if sigma is not None:
                log_d = distance.mean(dim=1).log()
                sigma = sigma * torch.exp(self.ref_weight * (log_d - self.ref_centre)).unsqueeze(1)
        return position, None if sigma is None else sigma * self.sigma_scale

    @property
    def loss(self) -> LossName:
        return self.config.loss

    @torch.no_grad()
    def fit_position_normalisation(self, pos: torch.Tensor | np.ndarray) -> None:
        """Set ``pos_mean``/``pos_scale`` from the site's training positions [N, 2] (metres).

        The scale is isotropic (RMS distance to the centroid over sqrt(2)), so the
        normalised MSE stays proportional to the Euclidean error and the sigma
        ellipse keeps its shape.
        """
        p = torch.as_tensor(np.asarray(pos), dtype=torch.float64)
        if p.dim() != 2 or p.shape[1] != 2 or p.shape[0] < 1:
            raise ValueError(f"positions must be [N >= 1, 2] metres, got {list(p.shape)}")
        if not torch.isfinite(p).all():
            raise ValueError("positions contain NaN or infinite values")
        mean = p.mean(dim=0)
        scale = float((p - mean).square().sum(dim=1).mean().div(2).sqrt())
        if scale < 1e-6:
            log.warning("training positions do not spread (scale %.3g m); using 1 m", scale)
            scale = 1.0
        self.pos_mean.copy_(mean.to(self.pos_mean.dtype))
        self.pos_scale.fill_(scale)

    @classmethod
    def ensemble(cls, heads: Sequence[Head]) -> Head:
        """One head whose members are copies of ``heads``' MLPs: plain heads of one config
        fitted to the same training positions (the normalisation must agree). Its
        ``sigma_scale`` is reset: calibrate the ensemble, not its members."""
        if not heads:
            raise ValueError("an ensemble needs at least one head")
        first = heads[0]
        for h in heads:
            if h.config != first.config or h.config.members != 1:
                raise ValueError(f"expected plain heads of one config, got {h.config}")
            if not (
                torch.equal(h.pos_mean, first.pos_mean)
                and torch.equal(h.pos_scale, first.pos_scale)
            ):
                raise ValueError("the heads were fitted to different positions; expected the same")
        out = cls(dataclasses.replace(first.config, members=len(heads)))
        slots = out.mlp if isinstance(out.mlp, nn.ModuleList) else [out.mlp]
        with torch.no_grad():
            for dst, h in zip(slots, heads, strict=True):
                dst.load_state_dict(h.mlp.state_dict())
            out.pos_mean.copy_(first.pos_mean)
            out.pos_scale.copy_(first.pos_scale)
        return out

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(self.mlp, nn.ModuleList):
            return self._ensemble(self.mlp, features)
        raw = self.mlp(features)
        position = raw[:, :2] * self.pos_scale + self.pos_mean
        if self.config.out == 2:
            return self._finish(position, None, features)
        sigma = _unit_sigma(raw[:, 2:4], self.config) * self.pos_scale
        return self._finish(position, sigma, features)

    def _ensemble(
        self, members: nn.ModuleList, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raw = torch.stack([m(features) for m in members])  # [K, B, out], normalised units
        means = raw[..., :2]
        mean = means.mean(dim=0)
        position = mean * self.pos_scale + self.pos_mean
        if self.config.out == 2:
            return self._finish(position, None, features)
        var = _unit_sigma(raw[..., 2:4], self.config).square().mean(dim=0)
        sigma = (var + (means - mean).square().mean(dim=0)).sqrt() * self.pos_scale
        return self._finish(position, sigma, features)


class BatchedHeads(nn.Module):
    """E heads of one config as stacked tensors: a training-time container for MEML.

    One parameter per layer with a leading environment axis (weights stored
    ``[E, in, out]``, biases ``[E, out]``) and the heads' buffers stacked the
    same way, so a step over k environments is one gather plus one ``baddbmm``
    per layer instead of k small module calls (at hundreds of environments the
    Python overhead of separate heads dominates the step). Each environment
    keeps its own ``pos_mean``/``pos_scale`` and sigma floor/scale, exactly as
    `Head.forward` applies them. `Head` stays the published (ONNX) module:
    build this from the heads (`from_heads`) and copy the result back
    (`write_back`).
    """

    pos_mean: torch.Tensor
    pos_scale: torch.Tensor
    sigma_scale: torch.Tensor

    def __init__(self, heads: Sequence[Head]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("BatchedHeads needs at least one head")
        config = heads[0].config
        for h in heads:
            if h.config != config:
                raise ValueError(
                    f"heads differ in config ({h.config} vs {config}); expected one config"
                )
        self.config = config
        self.act = _ACTIVATIONS[config.activation]()
        layers = [_linears(h) for h in heads]
        with torch.no_grad():
            self.weights = nn.ParameterList(
                nn.Parameter(torch.stack([ls[i].weight.detach().t() for ls in layers]).clone())
                for i in range(len(layers[0]))
            )
            self.biases = nn.ParameterList(
                nn.Parameter(torch.stack([ls[i].bias.detach() for ls in layers]).clone())
                for i in range(len(layers[0]))
            )
        self.register_buffer("pos_mean", torch.stack([h.pos_mean.detach() for h in heads]))
        self.register_buffer("pos_scale", torch.stack([h.pos_scale.detach() for h in heads]))
        self.register_buffer("sigma_scale", torch.stack([h.sigma_scale.detach() for h in heads]))

    @classmethod
    def from_heads(cls, heads: Sequence[Head]) -> BatchedHeads:
        return cls(heads)

    def __len__(self) -> int:
        return int(self.pos_mean.shape[0])

    @torch.no_grad()
    def write_back(self, heads: Sequence[Head]) -> None:
        """Copy every environment's weights and buffers into its `Head` (same order)."""
        if len(heads) != len(self):
            raise ValueError(f"{len(heads)} heads for {len(self)} batched environments")
        for k, head in enumerate(heads):
            for lin, w, b in zip(_linears(head), self.weights, self.biases, strict=True):
                lin.weight.copy_(w[k].t())
                lin.bias.copy_(b[k])
            head.pos_mean.copy_(self.pos_mean[k])
            head.pos_scale.copy_(self.pos_scale[k])
            head.sigma_scale.copy_(self.sigma_scale[k])

    def forward(
        self, features: torch.Tensor, envs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """features [k, B, F] of environments ``envs`` [k] (indices) -> position [k, B, 2] and
        sigma [k, B, 2] (nll) or None, in metres."""
        x = features
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b[envs].unsqueeze(1), x, w[envs])
            if i < last:
                x = self.act(x)
        scale = self.pos_scale[envs].unsqueeze(1)
        position = x[..., :2] * scale + self.pos_mean[envs].unsqueeze(1)
        if self.config.out == 2:
            return position, None
        sigma = _unit_sigma(x[..., 2:4], self.config) * scale
        return position, sigma * self.sigma_scale[envs].unsqueeze(1)

    def env_forward(
        self, env: int, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One environment's head on features [B, F], as its `Head` would compute it."""
        index = torch.tensor([env], device=features.device)
        pos, sigma = self(features.unsqueeze(0), index)
        return pos[0], None if sigma is None else sigma[0]


class JointBackbone(Backbone):
    """phi over every base station of a site at once: CSI [B, K*8, 103, 2] (the K BSs'
    fingerprints of one UE stacked on the antenna axis, in the site's BS order) -> the K
    feature vectors of one shared `Backbone`, concatenated [B, K*128].

    A head on it sees what every BS saw, so it can resolve a place that one BS confuses
    with another and a second BS does not (`training.multibs`, the joint head). Its
    ``config`` describes the composite (stacked input, concatenated features) so export
    and `SiteModel` treat it as any backbone; the shared backbone keeps its own.

    ``subsets``: a BS that did not hear the UE is sent as an all-zero block; the graph
    itself tells which blocks are present (any non-zero value), zeroes the absent BSs'
    features and appends one presence bit per BS [B, K*128 + K], so one head serves any
    subset of the BSs and a caller only zero-fills (the service, `/locate`).
    """

    def __init__(self, backbone: Backbone, stations: int, *, subsets: bool = False) -> None:
        nn.Module.__init__(self)
        if stations < 1:
            raise ValueError(f"stations must be >= 1, got {stations}")
        antennas, subcarriers, parts = backbone.config.input_shape
        self.shared = backbone
        self.stations = stations
        self.subsets = subsets
        self.config = dataclasses.replace(
            backbone.config,
            input_shape=(stations * antennas, subcarriers, parts),
            features=stations * backbone.config.features + (stations if subsets else 0),
        )

    def forward(self, csi: torch.Tensor) -> torch.Tensor:
        if not _exporting() and (csi.dim() != 4 or tuple(csi.shape[1:]) != self.config.input_shape):
            raise ValueError(
                f"joint input must be [batch, {', '.join(map(str, self.config.input_shape))}]"
                f" ({self.stations} base stations stacked on the antenna axis), "
                f"got {list(csi.shape)}"
            )
        per_bs = csi.reshape(-1, *self.shared.config.input_shape)
        features: torch.Tensor = self.shared(per_bs)
        if not self.subsets:
            return features.reshape(-1, self.stations * self.shared.config.features)
        heard = per_bs.abs().flatten(1).amax(dim=1, keepdim=True) > 0
        # where, not a product: an all-zero block's features need not be finite (the
        # exported atan2 of the timing removal gives NaN at 0/0, torch gives 0)
        kept = torch.where(heard, features, torch.zeros_like(features))
        present = heard.to(features.dtype).reshape(-1, self.stations)
        return torch.cat([kept.reshape(-1, self.stations * features.shape[1]), present], dim=1)


def _linears(head: Head) -> list[nn.Linear]:
    if head.config.members != 1:
        raise ValueError(f"batched heads are plain heads; got one of {head.config.members} members")
    return [m for m in head.mlp.modules() if isinstance(m, nn.Linear)]


class SiteModel(nn.Module):
    """The full model for one site: CSI [B, 8, 103, 2] -> (position [B, 2], sigma [B, 2] | None)."""

    def __init__(self, backbone: Backbone, head: Head) -> None:
        super().__init__()
        if head.config.in_features != backbone.config.features:
            raise ValueError(
                f"head expects {head.config.in_features} features, "
                f"backbone gives {backbone.config.features}"
            )
        self.backbone = backbone
        self.head = head

    @property
    def loss(self) -> LossName:
        return self.head.loss

    @property
    def outputs(self) -> tuple[str, ...]:
        """Output names, as in the ONNX model: ("position",) or ("position", "sigma")."""
        return ("position", "sigma") if self.loss == "nll" else ("position",)

    def forward(self, csi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.head(self.backbone(csi))  # type: ignore[no-any-return]


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (buffers such as the position normalisation excluded)."""
    return sum(p.numel() for p in module.parameters())
