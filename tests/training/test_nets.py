"""Backbone, Head, SiteModel: parameter counts, normalisation, sigma, seeds, input checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.export import site_model_onnx
from training.nets import (
    Backbone,
    BackboneConfig,
    BatchedHeads,
    Head,
    HeadConfig,
    JointBackbone,
    SiteModel,
    count_parameters,
    normalise_power,
)


def _last_linear(head: Head) -> torch.nn.Linear:
    last = head.mlp[-1]
    assert isinstance(last, torch.nn.Linear)
    return last


def _assert_onnx_parity(model: SiteModel, csi: torch.Tensor) -> None:
    """The exported graph gives the torch model's position and sigma."""
    graph = site_model_onnx(model, site="s", version="v1", backbone_ref="b:v1")
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    pos_onnx, sigma_onnx = session.run(["position", "sigma"], {"csi": csi.numpy()})
    with torch.no_grad():
        pos, sigma = model(csi)
    assert sigma is not None
    np.testing.assert_allclose(pos_onnx, pos.numpy(), atol=1e-5)
    np.testing.assert_allclose(sigma_onnx, sigma.numpy(), rtol=1e-4)


def test_parameter_counts_match_the_paper() -> None:
    backbone, head = Backbone(), Head()
    assert count_parameters(backbone) == 152_640
    assert count_parameters(head) == 33_282
    assert count_parameters(SiteModel(backbone, head)) == 185_922
    assert count_parameters(Head(loss="nll")) == 33_540
    assert BackboneConfig().spatial_out() == (2, 25)
    assert backbone.dense.in_features == 800


def test_configurable_size() -> None:
    cfg = BackboneConfig(block_channels=((8, 4), (8, 4)), features=32)
    model = SiteModel(Backbone(cfg), Head(HeadConfig(in_features=32, hidden=(16,))))
    pos, sigma = model(torch.randn(3, 8, 103, 2))
    assert pos.shape == (3, 2) and sigma is None
    with pytest.raises(ValueError, match="head expects 128 features"):
        SiteModel(Backbone(cfg), Head())


def test_outputs_and_sigma_positive() -> None:
    torch.manual_seed(0)
    model = SiteModel(Backbone(seed=1), Head(loss="nll", seed=2))
    # Push the raw sigma outputs very negative: softplus + floor must stay > 0.
    with torch.no_grad():
        _last_linear(model.head).bias[2:].fill_(-1e4)
    pos, sigma = model(torch.randn(5, 8, 103, 2))
    assert pos.shape == (5, 2) and sigma is not None and sigma.shape == (5, 2)
    assert bool((sigma > 0).all())
    assert torch.allclose(sigma, torch.full_like(sigma, 1e-3))  # floor x unit scale
    assert model.loss == "nll" and model.outputs == ("position", "sigma")
    assert SiteModel(Backbone(), Head()).outputs == ("position",)


def test_power_normalisation_invariance() -> None:
    model = SiteModel(Backbone(seed=0), Head(loss="nll", seed=0)).eval()
    csi = torch.randn(4, 8, 103, 2)
    pos, sigma = model(csi)
    assert sigma is not None
    for c in (1e-6, 1e-3, 7.5, 1e4):
        pos_c, sigma_c = model(csi * c)
        assert sigma_c is not None
        torch.testing.assert_close(pos_c, pos, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sigma_c, sigma, atol=1e-5, rtol=1e-5)
    # Per sample: scaling one sample leaves the others alone.
    mixed = csi.clone()
    mixed[1] *= 1e3
    torch.testing.assert_close(model(mixed)[0], pos, atol=1e-5, rtol=1e-5)
    normed = normalise_power(csi)
    torch.testing.assert_close(normed.square().mean(dim=(1, 2, 3)), torch.ones(4))


def test_zero_power_input_is_finite() -> None:
    model = SiteModel(Backbone(seed=0), Head(loss="nll", seed=0))
    pos, sigma = model(torch.zeros(2, 8, 103, 2))
    assert sigma is not None
    assert bool(torch.isfinite(pos).all() and torch.isfinite(sigma).all())


def test_position_normalisation() -> None:
    rng = np.random.default_rng(0)
    pos = rng.normal([100.0, -50.0], [10.0, 10.0], size=(500, 2)).astype(np.float32)
    head = Head(loss="nll", seed=0)
    head.fit_position_normalisation(pos)
    np.testing.assert_allclose(head.pos_mean.numpy(), pos.mean(axis=0), rtol=1e-4)
    assert 9.0 < float(head.pos_scale) < 11.0
    last = _last_linear(head)
    with torch.no_grad():
        last.weight.zero_()  # raw output = last bias: position = bias * scale + mean (metres)
    out, sigma = head(torch.randn(3, 128))
    assert sigma is not None
    expected = last.bias[:2] * head.pos_scale + head.pos_mean
    torch.testing.assert_close(out[0], expected)
    assert set(dict(head.named_buffers())) == {
        "pos_mean",
        "pos_scale",
        "sigma_scale",
        "ref_features",
        "ref_positions",
        "ref_blend",
        "ref_weight",
        "ref_centre",
    }
    assert "pos_scale" in head.state_dict()
    # Degenerate positions fall back to a 1 m scale; bad shapes are refused.
    head.fit_position_normalisation(np.ones((4, 2)))
    assert float(head.pos_scale) == 1.0
    with pytest.raises(ValueError, match=r"\[N >= 1, 2\]"):
        head.fit_position_normalisation(np.ones((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        head.fit_position_normalisation(np.array([[0.0, np.nan]]))


def test_seeds_make_identical_weights() -> None:
    a, b, c = Backbone(seed=3), Backbone(seed=3), Backbone(seed=4)
    for (_, pa), (_, pb), (_, pc) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)
    # A seeded build does not disturb the global RNG.
    torch.manual_seed(11)
    expected = torch.rand(1)
    torch.manual_seed(11)
    Head(seed=5)
    assert torch.equal(torch.rand(1), expected)


def test_bad_input_shapes_and_configs() -> None:
    backbone = Backbone()
    with pytest.raises(ValueError, match=r"must be \[batch, 8, 103, 2\]"):
        backbone(torch.randn(2, 2, 8, 103))
    with pytest.raises(ValueError, match="invalid loss"):
        HeadConfig(loss="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid activation"):
        BackboneConfig(activation="tanh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma_floor"):
        HeadConfig(sigma_floor=0.0)


def _fitted_heads(n: int, loss: str = "nll") -> list[Head]:
    pos = np.random.default_rng(0).normal([20.0, -5.0], 6.0, size=(100, 2))
    heads = [Head(HeadConfig(loss=loss, in_features=16, hidden=(8,)), seed=i) for i in range(n)]  # type: ignore[arg-type]
    for h in heads:
        h.fit_position_normalisation(pos)
    return heads


def test_an_ensemble_head_is_its_members_gaussians_moments() -> None:
    heads = _fitted_heads(3)
    heads[1].sigma_scale.fill_(3.0)  # a member's own calibration does not carry over
    ens = Head.ensemble(heads)
    assert ens.config.members == 3 and torch.equal(ens.sigma_scale, torch.ones(2))
    x = torch.randn(7, 16)
    with torch.no_grad():
        heads[1].sigma_scale.fill_(1.0)
        outs = [h(x) for h in heads]
        pos, sigma = ens(x)
    means = torch.stack([o[0] for o in outs])
    sig = torch.stack([o[1] for o in outs if o[1] is not None])
    torch.testing.assert_close(pos, means.mean(dim=0))
    var = sig.square().mean(dim=0) + (means - means.mean(dim=0)).square().mean(dim=0)
    assert sigma is not None
    torch.testing.assert_close(sigma, var.sqrt())
    assert bool((sigma >= sig.min(dim=0).values).all())  # the spread only widens it
    # saved and rebuilt from its config, as `training.checkpoint` loads a head
    again = Head(HeadConfig(**dataclasses.asdict(ens.config)))
    again.load_state_dict(ens.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], pos)
    # one member is the plain head; an MSE ensemble averages the positions
    with torch.no_grad():
        torch.testing.assert_close(Head.ensemble(heads[:1])(x)[0], outs[0][0])
        mse = _fitted_heads(2, "mse")
        got, none = Head.ensemble(mse)(x)
        torch.testing.assert_close(got, (mse[0](x)[0] + mse[1](x)[0]) / 2)
    assert none is None


def test_an_ensemble_head_exports_to_the_same_numbers() -> None:
    heads = [Head(loss="nll", seed=i) for i in range(3)]
    for h in heads:
        h.fit_position_normalisation(np.random.default_rng(1).normal(size=(50, 2)) * 4.0)
    model = SiteModel(Backbone(seed=0), Head.ensemble(heads)).eval()
    csi = torch.randn(4, 8, 103, 2)
    _assert_onnx_parity(model, csi)


def test_an_ensemble_refuses_what_it_cannot_average() -> None:
    heads = _fitted_heads(2)
    with pytest.raises(ValueError, match="at least one head"):
        Head.ensemble([])
    with pytest.raises(ValueError, match="plain heads of one config"):
        Head.ensemble([heads[0], Head(HeadConfig(loss="nll", in_features=16, hidden=(4,)))])
    with pytest.raises(ValueError, match="plain heads of one config"):
        Head.ensemble([Head.ensemble(heads)])
    other = _fitted_heads(1)[0]
    other.fit_position_normalisation(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="different positions"):
        Head.ensemble([heads[0], other])
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="members must be a positive integer"):
            HeadConfig(members=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="plain heads"):
        BatchedHeads([Head.ensemble(heads)])


def test_joint_backbone_concatenates_each_bs_features_in_order() -> None:
    backbone = Backbone(seed=0).eval()
    joint = JointBackbone(backbone, 3)
    assert joint.config.input_shape == (24, 103, 2) and joint.config.features == 3 * 128
    per_bs = [
        torch.randn(4, 8, 103, 2, generator=torch.Generator().manual_seed(k)) for k in range(3)
    ]
    with torch.no_grad():
        out = joint(torch.cat(per_bs, dim=1))
        for k, csi in enumerate(per_bs):  # block k: the shared backbone on BS k's CSI
            torch.testing.assert_close(out[:, 128 * k : 128 * (k + 1)], backbone(csi))
    assert list(joint.parameters()) == list(backbone.parameters())  # one shared backbone
    with pytest.raises(ValueError, match=r"3 base stations stacked"):
        joint(torch.randn(4, 16, 103, 2))
    with pytest.raises(ValueError, match="stations must be >= 1"):
        JointBackbone(backbone, 0)


def test_subset_joint_backbone_derives_presence_from_all_zero_blocks() -> None:
    """A BS sent as zeros is absent: its features zeroed, its presence bit 0, in torch and
    in the exported graph alike, so the service only zero-fills."""
    # the shipped inputs: the exported timing removal gives NaN on an all-zero block
    backbone = Backbone(BackboneConfig(inputs="phase-delay"), seed=0).eval()
    joint = JointBackbone(backbone, 3, subsets=True)
    assert joint.config.features == 3 * 128 + 3
    csi = torch.randn(4, 24, 103, 2, generator=torch.Generator().manual_seed(0))
    csi[1, 8:16] = 0.0  # bs1 absent
    csi[2, :8], csi[2, 16:] = 0.0, 0.0  # only bs1 heard
    with torch.no_grad():
        out = joint(csi)
        np.testing.assert_array_equal(
            out[:, -3:].numpy(), [[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 1]]
        )
        for k in range(3):
            block = out[:, 128 * k : 128 * (k + 1)]
            heard = out[:, 3 * 128 + k] > 0
            torch.testing.assert_close(block[heard], backbone(csi[heard, 8 * k : 8 * (k + 1)]))
            assert not block[~heard].any()
    model = SiteModel(joint, Head(HeadConfig(loss="nll", in_features=joint.config.features)))
    _assert_onnx_parity(model.eval(), csi)


def test_batched_heads_match_their_heads_and_write_back() -> None:
    """Each environment keeps its own normalisation and sigma scale, as its Head computes."""
    from training.nets import BatchedHeads

    cfg = HeadConfig(loss="nll", in_features=12, hidden=(8, 8))
    heads = [Head(cfg, seed=k) for k in range(3)]
    for k, h in enumerate(heads):
        h.fit_position_normalisation(np.random.default_rng(k).uniform(0, 10 * (k + 1), (20, 2)))
        h.sigma_scale.fill_(1.0 + k)
    batched = BatchedHeads(heads)
    feats = torch.randn(3, 5, 12)
    envs = torch.tensor([2, 0, 1])
    pos, sigma = batched(feats, envs)
    assert sigma is not None
    for row, e in enumerate(envs.tolist()):
        ref_pos, ref_sigma = heads[e](feats[row])
        assert ref_sigma is not None
        torch.testing.assert_close(pos[row], ref_pos)
        torch.testing.assert_close(sigma[row], ref_sigma)
        torch.testing.assert_close(batched.env_forward(e, feats[row])[0], ref_pos)
    with torch.no_grad():
        batched.weights[0][1] += 1.0
    fresh = [Head(cfg, seed=10 + k) for k in range(3)]
    batched.write_back(fresh)
    for old, new in zip(heads, fresh, strict=True):
        torch.testing.assert_close(new.pos_mean, old.pos_mean)
        torch.testing.assert_close(new.sigma_scale, old.sigma_scale)
    torch.testing.assert_close(fresh[1].mlp[0].weight, heads[1].mlp[0].weight + 1.0)
    torch.testing.assert_close(fresh[2].mlp[0].weight, heads[2].mlp[0].weight)
    with pytest.raises(ValueError, match="one config"):
        BatchedHeads([heads[0], Head(HeadConfig(in_features=12, hidden=(8,)))])


def test_with_fresh_dense_redraws_only_the_dense_layer_from_its_seed() -> None:
    """`auto`'s fresh-dense candidate keeps the pre-trained convolutions and draws the
    `dense` layer afresh: the copy differs from the source there alone, the same seed draws
    the same layer, and the source is untouched."""
    source = Backbone(seed=3)
    before = {k: v.clone() for k, v in source.state_dict().items()}
    fresh = source.with_fresh_dense(7)
    for key, value in fresh.state_dict().items():
        if key.startswith("dense."):
            assert not torch.equal(value, before[key]), key
            torch.testing.assert_close(value, Backbone(seed=7).state_dict()[key], rtol=0, atol=0)
        else:
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    again = source.with_fresh_dense(7).dense.weight
    torch.testing.assert_close(again, fresh.dense.weight, rtol=0, atol=0)
    assert not torch.equal(source.with_fresh_dense(8).dense.weight, fresh.dense.weight)
