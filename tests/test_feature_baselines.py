"""CWD, PKD and MGD against naive loops, hand values and their defining identities (methods.md §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from test_fgd import CS, CT, SIZES, assert_terms_equal
from yolokd.methods import KDBatch, build_method, method_defaults, reduce_terms

# CS, CT = [4, 6, 8], [6, 6, 10]: level 1 has equal widths (identity connector there); SIZES: strides 8/16/32.
N = 3


def _feats(channels, seed, scale=1.0, grad=False, n=N):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, c, h, w, generator=g) * scale + 0.5).requires_grad_(grad)
            for c, (h, w) in zip(channels, SIZES)]


def _build(name, cs=CS, ct=CT, **kw):
    torch.manual_seed(0)
    m = build_method(name, cs, ct, **kw)
    if name == "mgd":
        m.rng = torch.Generator().manual_seed(11)
    return m


def _adapted(conn, x):
    """The connector applied by hand: identity, or W x + b at every position (a 1x1 conv), as float64 numpy."""
    x = x.detach().double().numpy()
    if isinstance(conn, torch.nn.Identity):
        return x
    w, b = conn.weight[:, :, 0, 0].detach().double().numpy(), conn.bias.detach().double().numpy()
    out = np.zeros((x.shape[0], w.shape[0], *x.shape[2:]))
    for i in range(x.shape[0]):
        for y in range(x.shape[2]):
            for z in range(x.shape[3]):
                out[i, :, y, z] = w @ x[i, :, y, z] + b
    return out


# ---------------------------------------------------------------------------------------------------------- CWD
def _naive_cwd(m, s, t):
    ref = []
    for i in range(N):
        row = []
        for lvl, conn in enumerate(m.connectors):
            fs, ft = _adapted(conn, s[lvl])[i], t[lvl][i].detach().double().numpy()
            c = ft.shape[0]
            total = 0.0
            for ch in range(c):
                xs, xt = [v / m.temperature for v in fs[ch].ravel()], [v / m.temperature for v in ft[ch].ravel()]
                zs, zt = math.log(sum(math.exp(v) for v in xs)), math.log(sum(math.exp(v) for v in xt))
                for a, b in zip(xs, xt):  # sum over positions of p_T (log p_T - log p_S)
                    total += math.exp(b - zt) * ((b - zt) - (a - zs))
            row.append(m.weight * total * m.temperature**2 / c)
        ref.append(row)
    return {"cwd": ref}


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_cwd_equals_naive_loops(temperature):
    m = _build("cwd", weight=3.0, temperature=temperature)
    s, t = _feats(CS, 1), _feats(CT, 2, scale=2.0)
    terms = m(KDBatch(s, t, {}))
    assert tuple(terms) == ("cwd",) and terms["cwd"].shape == (N, 3) and terms["cwd"].dtype == torch.float32
    assert isinstance(m.connectors[1], torch.nn.Identity)  # equal widths: no connector, as mmrazor's configs
    assert_terms_equal(terms, _naive_cwd(m, s, t), rel=1e-5, abs=1e-9)


def test_cwd_is_zero_for_identical_features_and_ignores_a_per_channel_offset():
    m = _build("cwd", CT, CT)  # equal widths everywhere: identity connectors
    t = _feats(CT, 2)
    assert (m(KDBatch([x.clone() for x in t], t, {}))["cwd"].abs() < 1e-6).all()
    shifted = [x + torch.arange(x.shape[1]).view(1, -1, 1, 1) for x in t]  # a softmax ignores a constant per channel
    assert (m(KDBatch(shifted, t, {}))["cwd"].abs() < 1e-5).all()
    assert (m(KDBatch([x * 2 for x in t], t, {}))["cwd"] > 0).all()  # a scale changes the distributions


# ---------------------------------------------------------------------------------------------------------- PKD
def _naive_pkd(m, s, t):
    ref, pearson = [], []
    for i in range(N):
        row, prow = [], []
        for lvl, conn in enumerate(m.connectors):
            fs, ft = _adapted(conn, s[lvl])[i], t[lvl][i].detach().double().numpy()
            c, h, w = ft.shape
            total, one_minus_r = 0.0, 0.0
            for ch in range(c):
                zs, zt = [], []
                for x, z in ((fs[ch].ravel(), zs), (ft[ch].ravel(), zt)):
                    mean = sum(x) / len(x)
                    std = math.sqrt(sum((v - mean) ** 2 for v in x) / len(x))
                    z.extend((v - mean) / (std + 1e-6) for v in x)
                total += sum((a - b) ** 2 for a, b in zip(zs, zt))
                one_minus_r += 1 - np.corrcoef(fs[ch].ravel(), ft[ch].ravel())[0, 1]
            row.append(m.weight * total / (c * h * w) / 2)
            prow.append(m.weight * one_minus_r / c)
        ref.append(row)
        pearson.append(prow)
    return {"pkd": ref}, {"pkd": pearson}


def test_pkd_equals_naive_loops_and_one_minus_pearson():
    m = _build("pkd", weight=2.5)
    s, t = _feats(CS, 1), _feats(CT, 2, scale=3.0)
    terms = m(KDBatch(s, t, {}))
    assert tuple(terms) == ("pkd",) and terms["pkd"].shape == (N, 3) and terms["pkd"].dtype == torch.float32
    loops, pearson = _naive_pkd(m, s, t)
    assert_terms_equal(terms, loops, rel=1e-5, abs=1e-9)
    assert_terms_equal(terms, pearson, rel=1e-4, abs=1e-9)  # = weight * mean_c (1 - r_c), up to eps


def test_pkd_is_zero_for_features_equal_up_to_a_per_channel_affine_map():
    m = _build("pkd", CT, CT)
    t = _feats(CT, 2)
    g = torch.Generator().manual_seed(3)
    affine = [x * (torch.rand(1, x.shape[1], 1, 1, generator=g) * 5 + 0.1) + torch.randn(1, x.shape[1], 1, 1)
              for x in t]  # positive scale and any offset per channel
    assert (m(KDBatch(affine, t, {}))["pkd"].abs() < 1e-6).all()
    flipped = m(KDBatch([-x for x in t], t, {}))["pkd"]  # r = -1 in every channel
    assert torch.allclose(flipped, torch.full_like(flipped, 2 * m.weight), rtol=1e-5)
    one_by_one = [torch.randn(2, 4, 1, 1)]  # a 1x1 map (P5 at imgsz 32): every channel constant, 0 and not NaN
    single = build_method("pkd", [4], [4])(KDBatch(one_by_one, [torch.randn(2, 4, 1, 1)], {}))["pkd"]
    assert torch.equal(single, torch.zeros(2, 1))


# ---------------------------------------------------------------------------------------------------------- MGD
def _conv3x3(x, weight, bias):
    """A 3x3 convolution with zero padding 1 by explicit loops over positions and kernel taps (numpy float64)."""
    c_out, _, _, _ = weight.shape
    _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((c_out, h, w))
    for y in range(h):
        for z in range(w):
            acc = bias.copy()
            for dy in range(3):
                for dz in range(3):
                    acc += weight[:, :, dy, dz] @ padded[:, y + dy, z + dz]
            out[:, y, z] = acc
    return out


def _naive_mgd(m, s, t):
    """Masks drawn as documented (level by level, P3 first), generator and sums by loops."""
    g = torch.Generator().manual_seed(11)
    masks = [(torch.rand((N, 1, h, w), generator=g) >= m.lambda_mgd).double().numpy() for h, w in SIZES]
    ref = []
    for i in range(N):
        row = []
        for lvl, (conn, gen) in enumerate(zip(m.connectors, m.generators)):
            fs = _adapted(conn, s[lvl])[i] * masks[lvl][i]
            p = [(layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()) for layer in gen[::2]]
            rebuilt = _conv3x3(np.maximum(_conv3x3(fs, *p[0]), 0), *p[1])
            row.append(m.alpha * float(((rebuilt - t[lvl][i].detach().double().numpy()) ** 2).sum()))
        ref.append(row)
    return {"mgd": ref}, masks


def test_mgd_equals_naive_loops_with_the_same_masks():
    m = _build("mgd", alpha=0.3, lambda_mgd=0.65)
    s, t = _feats(CS, 1), _feats(CT, 2)
    terms = m(KDBatch(s, t, {}))
    assert tuple(terms) == ("mgd",) and terms["mgd"].shape == (N, 3) and terms["mgd"].dtype == torch.float32
    ref, masks = _naive_mgd(m, s, t)
    assert_terms_equal(terms, ref, rel=1e-5, abs=1e-9)
    assert 0 < sum(mk.sum() for mk in masks) < sum(mk.size for mk in masks)  # some pixels masked, some kept
    again = m(KDBatch(s, t, {}))["mgd"]  # the next step draws new masks
    assert not torch.allclose(again, terms["mgd"])


def test_mgd_masks_are_per_pixel_with_the_configured_ratio():
    m = _build("mgd", lambda_mgd=0.65)
    keep = m.keep_mask(64, 32, 32, torch.device("cpu"))
    assert keep.shape == (64, 1, 32, 32) and set(keep.unique().tolist()) <= {0.0, 1.0}  # one mask for every channel
    assert 1 - keep.mean().item() == pytest.approx(0.65, abs=0.01)
    assert (_build("mgd", lambda_mgd=0.0).keep_mask(2, 4, 4, torch.device("cpu")) == 1).all()
    with pytest.raises(ValueError, match="lambda_mgd must lie in"):
        _build("mgd", lambda_mgd=1.0)


def test_mgd_layout_follows_mmrazor():
    m = _build("mgd")
    assert isinstance(m.connectors[1], torch.nn.Identity)  # equal widths: no align conv
    assert all(m.connectors[i].kernel_size == (1, 1) for i in (0, 2))
    for gen, c in zip(m.generators, CT):
        assert [type(x).__name__ for x in gen] == ["Conv2d", "ReLU", "Conv2d"]
        assert all(x.kernel_size == (3, 3) and x.in_channels == x.out_channels == c for x in gen[::2])


# ------------------------------------------------------------------------------------------- shared properties
@pytest.mark.parametrize("name", ["cwd", "pkd", "mgd"])
def test_gradients_reach_the_student_and_the_methods_parameters_never_the_teacher(name):
    m = _build(name)
    s, t = _feats(CS, 1, grad=True), _feats(CT, 2, grad=True)  # a teacher that requires grad still gets none
    loss, items = reduce_terms(m(KDBatch(s, t, {})), N)
    loss.sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)
    assert set(items) == {f"{name}_loss"} and items[f"{name}_loss"] > 0
    for pname, p in m.named_parameters():
        if name == "pkd" and pname.endswith("bias"):
            # PKD standardises each channel, which removes any constant the connector adds: its bias's true gradient
            # is 0 (rounding leaves ~1e-9), so "reaches the parameter" cannot be asserted for it.
            assert p.grad is None or p.grad.abs().max() < 1e-6, pname
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["cwd", "pkd", "mgd"])
def test_fp16_inputs_give_the_fp32_result(name):
    s32, t32 = _feats(CS, 1, scale=3.0), _feats(CT, 2, scale=3.0)
    s16, t16 = [x.half() for x in s32], [x.half() for x in t32]
    out = _build(name)(KDBatch(s16, t16, {}))[name]
    same_inputs = _build(name)(KDBatch([x.float() for x in s16], [x.float() for x in t16], {}))[name]
    ref = _build(name)(KDBatch(s32, t32, {}))[name]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.allclose(out, same_inputs, rtol=1e-6, atol=0)  # computed in fp32
    assert torch.allclose(out, ref, rtol=5e-3, atol=1e-6)  # only the fp16 rounding of the inputs differs


@pytest.mark.parametrize("name", ["cwd", "pkd", "mgd"])
def test_images_without_boxes_are_like_any_other(name):
    """Whole-map methods never look at the labels: an empty label set changes nothing."""
    s, t = _feats(CS, 1), _feats(CT, 2)
    empty = {"bboxes": torch.zeros(0, 4), "cls": torch.zeros(0, 1), "batch_idx": torch.zeros(0)}
    a, b = _build(name)(KDBatch(s, t, empty))[name], _build(name)(KDBatch(s, t, {}))[name]
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_hyperparameters_come_from_the_yaml_and_are_checked():
    assert method_defaults("cwd") == {"weight": 10.0, "temperature": 1.0}  # mmrazor: tau 1, loss_weight 10
    assert method_defaults("pkd") == {"weight": 6.0}  # mmrazor: 6 (Faster R-CNN) .. 10 (RetinaNet)
    assert method_defaults("mgd") == {"alpha": 2e-5, "lambda_mgd": 0.65}  # mmrazor: alpha_mgd 2e-5, lambda_mgd 0.65
    s, t = _feats(CS, 1), _feats(CT, 2)
    for name, key in (("cwd", "weight"), ("pkd", "weight"), ("mgd", "alpha")):
        base = _build(name, **{key: 1.0})(KDBatch(s, t, {}))[name]
        assert torch.allclose(_build(name, **{key: "3"})(KDBatch(s, t, {}))[name], 3 * base, rtol=1e-6)
        with pytest.raises(ValueError, match=f"{key} must be >= 0"):
            _build(name, **{key: -1})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        _build("cwd", temperature=0)
    with pytest.raises(ValueError, match="level 1: student"):
        _build("cwd")(KDBatch(s, [t[0], t[2], t[2]], {}))


# End to end with these methods: tests/test_train_e2e.py::test_train_end_to_end[cwd-...], [pkd-...], [mgd-...].
