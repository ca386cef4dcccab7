"""Tests for drasclr_toolkit.models: CondConv3d, DrasCLREncoder, official checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drasclr_toolkit.landmarks import normalize_landmarks
from drasclr_toolkit.models import (
    CONDITIONINGS,
    CondConv3d,
    DrasCLREncoder,
    PerSampleCondConv3d,
    layer_specs,
    load_official_checkpoint,
    official_landmark_coords,
    plan_locations,
)

TINY = dict(rep_dim=8, proj_dim=6, num_experts=3, width=0.25)


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, BN statistics included, so comparisons are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                vals = torch.rand(t.shape, generator=g, dtype=torch.float64) * 0.8 + 0.2
                if not name.endswith("running_var"):
                    vals = torch.randn(t.shape, generator=g, dtype=torch.float64) * 0.3
                t.copy_(vals.to(t.dtype))


def _pair(stride: int, bias: bool = True) -> tuple[CondConv3d, PerSampleCondConv3d]:
    torch.manual_seed(1)
    fast = CondConv3d(3, 4, 3, num_experts=5, stride=stride, padding=1, bias=bias).double()
    _randomise(fast)
    ref = PerSampleCondConv3d(3, 4, 3, num_experts=5, stride=stride, padding=1, bias=bias).double()
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _grads(conv: nn.Module, x: torch.Tensor, loc: torch.Tensor, seed: int = 7):
    x = x.clone().requires_grad_(True)
    conv.zero_grad()
    out = conv(x, loc)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in conv.named_parameters()}
    return out.detach(), x.grad.clone(), grads


CASES = ["per_sample_grouped", "per_sample_stacked", "per_sample_auto", "few_locations",
         "shared_vector", "shared_row", "equal_rows"]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_condconv_matches_per_sample_outputs_and_gradients(stride: int, case: str) -> None:
    fast, ref = _pair(stride)
    batch = 5
    x = torch.randn(batch, 3, 7, 6, 5, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    loc = torch.rand(batch, 3, generator=g, dtype=torch.float64) * 2 - 1
    if case.startswith("per_sample"):  # distinct locations but two samples share one
        loc[3] = loc[0]
        fast.max_groups = 1  # never group by location: one kernel per sample
        fast.per_sample_impl = case.split("_")[-1]
    elif case == "few_locations":  # e.g. a flattened batch of k = 2 neighbour locations
        loc[2:4] = loc[0]
        loc[4] = loc[1]
    elif case == "shared_vector":
        loc = loc[0]
    elif case == "shared_row":
        loc = loc[:1]
    else:  # (B, 3) with all rows equal: takes the one-kernel path
        loc = loc[:1].expand(batch, 3).clone()
    out_f, gx_f, gp_f = _grads(fast, x, loc)
    out_r, gx_r, gp_r = _grads(ref, x, loc)
    assert out_f.shape == (batch, 4, *[(s - 1) // stride + 1 for s in (7, 6, 5)])
    torch.testing.assert_close(out_f, out_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx_f, gx_r, rtol=1e-10, atol=1e-10)
    assert set(gp_f) == {"weight", "bias", "routing.weight", "routing.bias"}
    for name in gp_f:
        assert gp_f[name].abs().sum() > 0, name
        torch.testing.assert_close(gp_f[name], gp_r[name], rtol=1e-10, atol=1e-10)


def test_location_plan_classifies_batches() -> None:
    loc = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0]])
    plan = plan_locations(loc, 4)
    assert plan.grouped and plan.counts == (2, 2)
    in_order = plan.locations.repeat_interleave(torch.tensor(plan.counts), dim=0)
    torch.testing.assert_close(in_order[plan.restore], loc)  # groups map back to samples
    assert not plan_locations(loc, 4, max_groups=1).grouped
    assert plan_locations(loc, 4, max_groups=1).locations.shape == (4, 3)
    assert plan_locations(loc[:1].expand(4, 3), 4).shared
    assert not plan_locations(loc.requires_grad_(True), 4).grouped  # no unique() on grads


def test_condconv_per_sample_path_differs_by_location_and_matches_single_calls() -> None:
    fast, _ = _pair(1, bias=False)
    x = torch.randn(3, 3, 5, 5, 5, dtype=torch.float64)
    loc = torch.tensor([[-1.0, 0.0, 1.0], [0.5, 0.5, 0.5], [1.0, -1.0, 0.0]], dtype=torch.float64)
    out = fast(x, loc)
    for b in range(3):  # each sample equals a batch-of-one call at its own location
        torch.testing.assert_close(out[b:b + 1], fast(x[b:b + 1], loc[b]), rtol=1e-10, atol=1e-10)
    same_x = x[:1].expand(3, -1, -1, -1, -1)
    out_same = fast(same_x, loc)
    assert not torch.allclose(out_same[0], out_same[1])  # the location changes the kernel


def test_condconv_kernel_is_sigmoid_mixture_of_experts() -> None:
    conv, _ = _pair(1)
    loc = torch.tensor([[0.2, -0.4, 0.9]], dtype=torch.float64)
    r = torch.sigmoid(loc @ conv.routing.weight.T + conv.routing.bias)[0]
    expected = sum(r[e] * conv.weight[e] for e in range(conv.num_experts))
    x = torch.randn(2, 3, 5, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(conv(x, loc), F.conv3d(x, expected, conv.bias, 1, 1))


def test_condconv_rejects_bad_locations() -> None:
    conv = CondConv3d(2, 2, 3, num_experts=2, padding=1)
    x = torch.randn(4, 2, 4, 4, 4)
    with pytest.raises(ValueError, match="rows but the batch has 4"):
        conv(x, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="loc has shape"):
        conv(x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="expects input"):
        conv(torch.randn(4, 3, 4, 4, 4), torch.zeros(3))


def test_condconv_init_matches_conv3d_per_expert() -> None:
    torch.manual_seed(0)
    cin, cout = 16, 32
    cond = CondConv3d(cin, cout, 3, num_experts=8)
    plain_std = torch.stack([nn.Conv3d(cin, cout, 3).weight.detach().std() for _ in range(4)]).mean()
    fan_in_bound = 1.0 / math.sqrt(cin * 27)
    for e in range(8):
        ratio = float(cond.weight[e].detach().std() / plain_std)
        assert 0.9 < ratio < 1.1, (e, ratio)
        assert float(cond.weight[e].detach().abs().max()) <= fan_in_bound + 1e-7
    # The reference's fan-in on the 6-D tensor would be cout times larger: sqrt(cout) smaller std.
    assert float(cond.weight.detach().std()) > 3 * plain_std / math.sqrt(cout)
    assert float(cond.bias.detach().abs().max()) <= fan_in_bound
    assert float(cond.bias.detach().std()) > 0.3 * fan_in_bound


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_encoder_shapes_and_location_dependence(conditioning: str) -> None:
    torch.manual_seed(0)
    enc = DrasCLREncoder(conditioning=conditioning, **TINY).eval()
    x = torch.rand(3, 1, 32, 32, 32) * 2 - 1
    loc_a, loc_b = torch.tensor([-0.5, 0.2, 0.9]), torch.tensor([0.7, -0.9, 0.1])
    with torch.no_grad():
        h, z = enc(x, loc_a)
        h_b, z_b = enc(x, loc_b)
        h_enc = enc.encode(x, loc_a)
        h_rows, z_rows = enc(x, loc_a.expand(3, 3))
    assert h.shape == (3, TINY["rep_dim"]) and z.shape == (3, TINY["proj_dim"])
    torch.testing.assert_close(h_enc, h)
    torch.testing.assert_close(h_rows, h)
    torch.testing.assert_close(z_rows, z)
    assert torch.isfinite(z).all()
    assert torch.allclose(h, h_b) == (conditioning != "condconv")
    assert torch.allclose(z, z_b) == (conditioning == "none")


@pytest.mark.parametrize("max_groups", [8, 1])
def test_encoder_batched_equals_reference_loop_with_mixed_locations(max_groups: int) -> None:
    fast = DrasCLREncoder(**TINY).double()
    fast.max_location_groups = max_groups  # 8: one conv per location; 1: per-sample kernels
    _randomise(fast, seed=4)
    ref = DrasCLREncoder(**TINY, reference_loop=True).double()
    ref.load_state_dict(fast.state_dict())
    fast.train(), ref.train()  # batch statistics: BN sees the whole batch in both
    x = torch.rand(4, 1, 32, 32, 32, dtype=torch.float64) * 2 - 1
    loc = torch.rand(4, 3, dtype=torch.float64) * 2 - 1
    h_f, z_f = fast(x, loc)
    h_r, z_r = ref(x, loc)
    torch.testing.assert_close(h_f, h_r)
    torch.testing.assert_close(z_f, z_r)
    z_f.sum().backward(), z_r.sum().backward()
    for (name, p_f), p_r in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p_f.grad, p_r.grad, msg=name)


def test_encoder_default_architecture_and_parameter_count() -> None:
    specs = layer_specs()
    assert specs == [(1, 8, 1), (8, 8, 2), (8, 16, 1), (16, 16, 1), (16, 16, 2), (16, 32, 1),
                     (32, 32, 1), (32, 32, 2), (32, 64, 1), (64, 64, 1), (64, 64, 2),
                     (64, 128, 1), (128, 128, 2)]
    enc = DrasCLREncoder()
    experts = 8
    expected = sum(experts * o * i * 27 + o + 4 * experts + 2 * o for i, o, _ in specs)
    expected += (128 * 128 + 128) * 2
    assert enc.num_parameters() == expected
    assert 8.2e6 < expected < 8.3e6  # the reference reports 8.25 M
    plain = DrasCLREncoder(conditioning="none")
    assert plain.num_parameters() == sum(o * i * 27 + 3 * o for i, o, _ in specs) + 2 * (128 * 129)


def test_encoder_rejects_bad_input() -> None:
    enc = DrasCLREncoder(**TINY)
    with pytest.raises(ValueError, match="conditioning"):
        DrasCLREncoder(conditioning="film")
    with pytest.raises(ValueError, match="expects patches"):
        enc(torch.zeros(2, 32, 32, 32), torch.zeros(3))
    with pytest.raises(ValueError, match="not 1"):
        enc.encode(torch.zeros(2, 1, 64, 64, 64), torch.zeros(3))


def test_landmark_normalisations() -> None:
    pts = np.array([[26, 78, 0], [312, 286, 286], [130, 182, 104]])
    ours = normalize_landmarks(pts)
    np.testing.assert_allclose(ours.min(0), -1.0)
    np.testing.assert_allclose(ours.max(0), 1.0)
    official = official_landmark_coords(pts)
    np.testing.assert_allclose(official, pts / pts.max(0) * 2 - 1, rtol=1e-6)
    assert official[:, 0].min() > -1.0 and official[:, 2].min() == -1.0  # no min subtraction
    with pytest.raises(ValueError, match=r"\(L, 3\)"):
        normalize_landmarks(np.zeros((4, 2)))


# --- a stand-in for the reference code's module tree, written here from its key layout ---

class _Routing(nn.Module):
    def __init__(self, experts: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3, experts)


class _OfficialCondConv(nn.Module):
    """Reference semantics: per-sample loop, sigmoid routing on the flattened location."""

    def __init__(self, cin: int, cout: int, experts: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.randn(experts, cout, cin, 3, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)
        self._routing_fn = _Routing(experts)

    def forward(self, x: torch.Tensor, locs: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(x.shape[0]):
            r = torch.sigmoid(self._routing_fn.fc(torch.flatten(locs[i])))
            kernel = (r[:, None, None, None, None, None] * self.weight).sum(0)
            outs.append(F.conv3d(x[i:i + 1], kernel, self.bias, self.stride, 1))
        return torch.cat(outs)


class _OfficialBlock(nn.Module):
    def __init__(self, cin: int, cout: int, experts: int) -> None:
        super().__init__()
        for i, (a, s) in enumerate([(cin, 1), (cout, 1), (cout, 2)], start=1):
            setattr(self, f"conv{i}", _OfficialCondConv(a, cout, experts, s))
            setattr(self, f"bn{i}", nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        for i in (1, 2, 3):
            x = F.elu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x, loc)))
        return x


class _OfficialEncoder(nn.Module):
    def __init__(self, c: list[int], rep: int, moco: int, experts: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _OfficialCondConv(1, c[0], experts, 1), nn.BatchNorm3d(c[0])
        self.conv2, self.bn2 = _OfficialCondConv(c[0], c[0], experts, 2), nn.BatchNorm3d(c[0])
        self.downsample1 = _OfficialBlock(c[0], c[1], experts)
        self.downsample2 = _OfficialBlock(c[1], c[2], experts)
        self.downsample3 = _OfficialBlock(c[2], c[3], experts)
        self.conv3, self.bn3 = _OfficialCondConv(c[3], c[4], experts, 1), nn.BatchNorm3d(c[4])
        self.conv4, self.bn4 = _OfficialCondConv(c[4], rep, experts, 2), nn.BatchNorm3d(rep)
        self.fc = nn.Sequential(nn.Linear(rep, rep), nn.ReLU(), nn.Linear(rep, moco))

    def forward(self, x: torch.Tensor, loc: torch.Tensor):
        x = F.elu(self.bn1(self.conv1(x, loc)))
        x = F.elu(self.bn2(self.conv2(x, loc)))
        x = self.downsample3(self.downsample2(self.downsample1(x, loc), loc), loc)
        x = F.elu(self.bn3(self.conv3(x, loc)))
        h = torch.flatten(F.elu(self.bn4(self.conv4(x, loc))), 1)
        return self.fc(h), h  # the reference returns (z, h)


def _write_official_checkpoint(path, with_mlp: bool = True):
    torch.manual_seed(5)
    official = _OfficialEncoder([2, 4, 8, 16, 32], rep=8, moco=6, experts=3)
    if not with_mlp:
        official.fc = nn.Linear(8, 6)
    _randomise(official, seed=9)
    official.eval()
    state = {}
    for branch in ("encoder_q", "encoder_k"):
        for k, v in official.state_dict().items():
            state[f"module.{branch}.{k}"] = v.clone() if branch == "encoder_q" else v * 0.5
    state["module.queue"] = torch.randn(6, 16, 5)
    state["module.queue_ptr"] = torch.zeros(5, dtype=torch.long)
    torch.save({"epoch": 20, "arch": "custom", "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}},
               path)
    return official


def test_official_checkpoint_round_trip(tmp_path) -> None:
    path = tmp_path / "checkpoint_patch_0020.pth.tar"
    official = _write_official_checkpoint(path)
    enc, report = load_official_checkpoint(path)
    assert report.ok, (report.missing_keys, report.unexpected_keys)
    assert report.prefix == "module.encoder_q."
    assert report.epoch == 20
    assert report.config == {"rep_dim": 8, "num_experts": 3, "width": 0.25, "proj_dim": 6,
                             "in_channels": 1, "conditioning": "condconv"}
    assert report.ignored_keys == len(official.state_dict()) + 2
    assert not enc.training
    landmarks = np.array([[26, 78, 0], [312, 286, 286], [130, 182, 104], [52, 104, 26]])
    loc = torch.from_numpy(official_landmark_coords(landmarks))
    x = torch.rand(4, 1, 32, 32, 32) * 2 - 1
    with torch.no_grad():
        z_ref, h_ref = official(x, loc)
        h, z = enc(x, loc)
        h_shared, _ = enc(x, loc[1])
        _, h_ref_shared = official(x, loc[1:2].expand(4, 3))
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z, z_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h_shared, h_ref_shared, rtol=1e-4, atol=1e-5)

    # The momentum encoder is the other branch.
    enc_k, report_k = load_official_checkpoint(path, branch="encoder_k")
    torch.testing.assert_close(enc_k.features[0].conv.weight, official.conv1.weight * 0.5)
    assert report_k.ok

    # A caller-built encoder of the wrong shape is refused, naming the key.
    with pytest.raises(ValueError, match="conv1.weight"):
        load_official_checkpoint(path, encoder=DrasCLREncoder(**{**TINY, "num_experts": 4}))


def test_official_checkpoint_without_mlp_head_reports_keys(tmp_path) -> None:
    path = tmp_path / "no_mlp.pth.tar"
    _write_official_checkpoint(path, with_mlp=False)
    enc, report = load_official_checkpoint(path)
    assert report.unexpected_keys == ["fc.bias", "fc.weight"]
    assert set(report.missing_keys) == {"head.0.weight", "head.0.bias", "head.2.weight",
                                        "head.2.bias"}
    assert not report.ok
    with pytest.raises(ValueError, match="strict"):
        load_official_checkpoint(path, strict=True)


def test_official_checkpoint_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_official_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "other.pth"
    torch.save({"state_dict": {"backbone.weight": torch.zeros(2)}}, bad)
    with pytest.raises(ValueError, match="other.pth.*no 'encoder_q' encoder"):
        load_official_checkpoint(bad)
