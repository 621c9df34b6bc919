"""kernel_algebra against direct computations: PyTorch convolutions (groups, 1-3 spatial dims)
and numpy matrix products, in float64 on random shapes. Tolerance: max|err| <= 1e-10 * max|ref|.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reforge.passes import kernel_algebra as ka

RTOL = 1e-10
SEEDS = range(9)  # every pair of (1, 2, 3 spatial dims) x (1, 2, 3 groups)
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def close(out, ref, rtol=RTOL):
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err <= rtol, f"max|err| / max|ref| = {err:.3g} > {rtol}"


def random_conv(seed: int):
    """A random grouped conv: x, W (OI*k), groups, conv(x, W, padding) as a function of (x, W)."""
    rng = np.random.default_rng(seed)
    dims, groups = 1 + seed % 3, 1 + (seed // 3) % 3
    cin_g, cout_g = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    if seed in (4, 8):  # depthwise, with a channel multiplier when cout_g > 1
        cin_g = 1
    kernel = tuple(int(k) for k in rng.integers(1, 4, dims))
    spatial = tuple(k + int(rng.integers(1, 4)) for k in kernel)
    x = rng.standard_normal((2, groups * cin_g) + spatial)
    w = rng.standard_normal((groups * cout_g, cin_g) + kernel)

    def conv(x_, w_, padding=0):
        return CONV[dims](torch.from_numpy(x_), torch.from_numpy(w_), groups=groups, padding=padding).numpy()

    return rng, x, w, groups, conv


def channels(v: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast along axis 1 of an ndim tensor."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def signed(rng, n):
    return rng.uniform(0.2, 2.0, n) * rng.choice([-1.0, 1.0], n)


def test_batchnorm_scale_shift_matches_torch_batch_norm():
    rng = np.random.default_rng(0)
    c = 7
    gamma, beta, mean = signed(rng, c), rng.standard_normal(c), rng.standard_normal(c)
    var, eps = rng.uniform(1e-4, 2.0, c), 1e-3
    x = rng.standard_normal((3, c, 4, 5))
    s, t = ka.batchnorm_scale_shift(gamma, beta, mean, var, eps)
    ref = F.batch_norm(*(torch.from_numpy(a) for a in (x, mean, var, gamma, beta)), training=False, eps=eps)
    close(x * channels(s, 4) + channels(t, 4), ref.numpy())


@pytest.mark.parametrize("seed", SEEDS)
def test_scale_conv_outputs(seed):
    rng, x, w, _, conv = random_conv(seed)
    s = signed(rng, w.shape[0])
    close(conv(x, ka.scale_conv_outputs(w, s)), conv(x, w) * channels(s, x.ndim))


@pytest.mark.parametrize("seed", SEEDS)
def test_scale_conv_inputs(seed):
    rng, x, w, groups, conv = random_conv(seed)
    s = signed(rng, x.shape[1])
    for padding in (0, 1):  # zero padding stays zero under a scale
        close(conv(x, ka.scale_conv_inputs(w, s, groups), padding), conv(x * channels(s, x.ndim), w, padding))


@pytest.mark.parametrize("seed", SEEDS)
def test_conv_bias_of_input_shift(seed):
    rng, x, w, groups, conv = random_conv(seed)
    t = rng.standard_normal(x.shape[1])
    b = ka.conv_bias_of_input_shift(w, t, groups)
    assert b.shape == (w.shape[0],)
    close(conv(x, w) + channels(b, x.ndim), conv(x + channels(t, x.ndim), w))
    if np.prod(w.shape[2:]) > 1:  # documented limit: a zero-padded border sees 0, not t
        padded = conv(x + channels(t, x.ndim), w, 1)
        assert np.abs(conv(x, w, 1) + channels(b, x.ndim) - padded).max() > 1e-3 * np.abs(padded).max()


@pytest.mark.parametrize("seed", SEEDS)
def test_conv_input_channel_map_is_what_torch_reads(seed):
    """conv of an image whose channel c is the constant c with a kernel that is 1 only at
    W[o, i] gives idx[o, i] at output channel o."""
    _, x, w, groups, conv = random_conv(seed)
    idx = ka.conv_input_channel_map(w, groups)
    assert idx.shape == w.shape[:2]
    ramp = np.broadcast_to(channels(np.arange(x.shape[1], dtype=np.float64), x.ndim), x.shape).copy()
    for o in range(w.shape[0]):
        for i in range(w.shape[1]):
            one = np.zeros_like(w)
            one[(o, i) + (0,) * (w.ndim - 2)] = 1.0
            read = conv(ramp, one)[:, o]
            assert np.all(read == idx[o, i]), (o, i, idx[o, i], read.ravel()[:3])


@pytest.mark.parametrize("seed", SEEDS)
def test_dense_rules(seed):
    rng = np.random.default_rng(seed)
    lead = tuple(int(d) for d in rng.integers(1, 4, 1 + seed % 2))  # x of rank 2 or 3
    k, n = (int(d) for d in rng.integers(1, 9, 2))
    x, w = rng.standard_normal(lead + (k,)), rng.standard_normal((k, n))
    s_out, s_in, t = signed(rng, n), signed(rng, k), rng.standard_normal(k)
    close(x @ ka.scale_dense_outputs(w, s_out), (x @ w) * s_out)
    close(x @ ka.scale_dense_inputs(w, s_in), (x * s_in) @ w)
    close(x @ w + ka.dense_bias_of_input_shift(w, t), (x + t) @ w)


@pytest.mark.parametrize("fn,args", [
    (ka.batchnorm_scale_shift, "gamma beta mean var eps"),
    (ka.scale_conv_outputs, "w s_out"),
    (ka.scale_conv_inputs, "w s_in groups"),
    (ka.conv_bias_of_input_shift, "w s_in groups"),
    (ka.conv_input_channel_map, "w groups"),
    (ka.scale_dense_outputs, "d s_d"),
    (ka.scale_dense_inputs, "d s_k"),
    (ka.dense_bias_of_input_shift, "d s_k"),
], ids=lambda v: getattr(v, "__name__", ""))
def test_pure_functions_return_new_arrays(fn, args):
    rng = np.random.default_rng(1)
    pool = {"gamma": signed(rng, 4), "beta": rng.standard_normal(4), "mean": rng.standard_normal(4),
            "var": rng.uniform(0.5, 1, 4), "eps": 1e-5, "w": rng.standard_normal((4, 2, 3, 3)),
            "s_out": signed(rng, 4), "s_in": signed(rng, 4), "groups": 2, "d": rng.standard_normal((3, 4)),
            "s_d": signed(rng, 4), "s_k": signed(rng, 3)}
    call = [pool[a] for a in args.split()]
    copies = [np.copy(a) for a in call]
    result = fn(*call)
    for a, c in zip(call, copies):
        np.testing.assert_array_equal(a, c)  # no argument modified
    for r in result if isinstance(result, tuple) else (result,):
        assert not any(np.shares_memory(r, a) for a in call if isinstance(a, np.ndarray))


# ----------------------------------------------------------------------------- re-parameterization


def conv2d(x, w, groups=1, padding=0, stride=1):
    return F.conv2d(torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(w)), groups=groups,
                    padding=padding, stride=stride).numpy()


@pytest.mark.parametrize("groups,new_groups", [(4, 2), (4, 1), (2, 2), (8, 4), (8, 1)])
def test_regroup_conv(groups, new_groups):
    rng = np.random.default_rng(groups * 10 + new_groups)
    x = rng.standard_normal((2, 8, 5, 5))
    w = rng.standard_normal((8, 8 // groups, 3, 3))
    close(conv2d(x, ka.regroup_conv(w, groups, new_groups), new_groups), conv2d(x, w, groups))


def test_channel_kernel_is_scale_identity_and_average_pooling():
    rng = np.random.default_rng(3)
    x, s = rng.standard_normal((2, 6, 5, 5)), signed(rng, 6)
    close(conv2d(x, ka.channel_kernel(s), 6), x * channels(s, 4))
    close(conv2d(x, ka.regroup_conv(ka.channel_kernel(np.ones(6)), 6, 1)), x)  # Dirac kernel, dense
    pool = F.avg_pool2d(torch.from_numpy(x), 3, 1, 1, count_include_pad=True).numpy()
    close(conv2d(x, ka.channel_kernel(np.full(6, 1 / 9), (3, 3)), 6, padding=1), pool)


@pytest.mark.parametrize("stride", [1, 2])
def test_merge_parallel_convs_repvgg_acnet(stride):
    """3×3 (pad 1) + 1×1 (pad 0) + 1×3 (pad 0,1) + 3×1 (pad 1,0) + identity = one 3×3, pad 1."""
    rng = np.random.default_rng(stride)
    x = rng.standard_normal((2, 4, 7, 7))
    w3, w1 = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal((4, 4, 1, 1))
    w13, w31 = rng.standard_normal((4, 4, 1, 3)), rng.standard_normal((4, 1, 3, 1))
    ref = (conv2d(x, w3, 2, 1, stride) + conv2d(x, w1, 1, 0, stride) + conv2d(x, w13, 1, (0, 1), stride)
           + conv2d(x, w31, 4, (1, 0), stride))
    kernels = [(w3, 2), (w1, 1), (w13, 1), (w31, 4)]
    if stride == 1:
        ref = ref + x
        kernels.append((ka.channel_kernel(np.ones(4)), 4))
    w, g = ka.merge_parallel_convs(kernels, (3, 3))
    assert g == 1 and w.shape == (4, 4, 3, 3)
    close(conv2d(x, w, g, 1, stride), ref)


@pytest.mark.parametrize("g1,g2", [(1, 1), (2, 2), (4, 1), (1, 4), (2, 4), (4, 2)])
def test_compose_convs(g1, g2):
    """conv(conv(x, W1), W2) with no padding between = conv(x, W1 ⊛ W2), g = gcd(g1, g2)."""
    rng = np.random.default_rng(g1 * 7 + g2)
    x = rng.standard_normal((2, 8, 9, 9))
    w1, w2 = rng.standard_normal((8, 8 // g1, 3, 1)), rng.standard_normal((4, 8 // g2, 3, 3))
    w, g = ka.compose_convs(w1, g1, w2, g2)
    assert g == np.gcd(g1, g2) and w.shape == (4, 8 // g, 5, 3)
    close(conv2d(x, w, g, padding=1), conv2d(conv2d(x, w1, g1, padding=1), w2, g2))


@pytest.mark.parametrize("shape1,g1,shape2,g2", [
    ((8, 1, 3, 3), 8, (4, 8, 1, 1), 1),  # average pooling (depthwise) then a 1x1 conv
    ((8, 2, 3, 1), 8, (6, 8, 3, 3), 1),  # one output channel per group, two inputs each
    ((8, 4, 1, 1), 2, (8, 1, 3, 3), 8),  # a depthwise second
    ((8, 1, 5, 5), 8, (8, 1, 3, 3), 8),  # both depthwise
])
def test_compose_convs_single_middle_channel_is_the_dense_sum_bit_for_bit(shape1, g1, shape2, g2):
    """Where each (output, input) channel pair meets through one middle channel, compose_convs takes
    that product alone: equal, bit for bit, to the dense contraction over all middle channels (the
    others add exact zeros), and the composition of the two convs (1e-9 in float64)."""
    rng = np.random.default_rng(sum(shape1) + g2)
    w1, w2 = rng.standard_normal(shape1), rng.standard_normal(shape2)
    w1[w1 > 1.2], w2[w2 < -1.2] = 0.0, -0.0
    w, g = ka.compose_convs(w1, g1, w2, g2)
    d1, d2 = ka.regroup_conv(w1, g1, 1), ka.regroup_conv(w2, g2, 1)
    (k1h, k1w), (k2h, k2w) = shape1[2:], shape2[2:]
    dense = np.zeros((shape2[0], d1.shape[1], k1h + k2h - 1, k1w + k2w - 1))
    for bh in range(k2h):
        for bw in range(k2w):
            dense[:, :, bh:bh + k1h, bw:bw + k1w] += np.einsum("om,mcij->ocij", d2[:, :, bh, bw], d1)
    np.testing.assert_array_equal(ka.regroup_conv(w, g, 1).view(np.int64), dense.view(np.int64))
    x = rng.standard_normal((1, d1.shape[1], 9, 9))
    np.testing.assert_allclose(conv2d(x, w, g, padding=1),
                               conv2d(conv2d(x, w1, g1, padding=1), w2, g2), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- binary layers


def test_binary_scales_reads_alpha_times_signs():
    rng = np.random.default_rng(0)
    s = np.where(rng.standard_normal((6, 4, 3, 3)) >= 0, 1.0, -1.0).astype("float32")
    alpha = rng.uniform(0.1, 2, 6).astype("float32")
    got, has_zero = ka.binary_scales(s * alpha[:, None, None, None])
    np.testing.assert_array_equal(got, alpha)
    assert not has_zero
    dense = s.reshape(6, -1).T * alpha[None, :]  # [K, M]: output features on axis 1
    np.testing.assert_array_equal(ka.binary_scales(dense, 1)[0], alpha)
    with_zero = s.copy()
    with_zero[2, 1, 0, 0] = 0.0
    assert ka.binary_scales(with_zero) == (None, True)
    assert ka.binary_scales(rng.standard_normal((6, 4, 3, 3)).astype("float32")) == (None, False)


@pytest.mark.parametrize("taps", [9, 72, 576])
def test_binary_thresholds_reproduce_the_float_expression(taps):
    """bit = d >= thr (d <= thr where flipped) equals fl(fl(α·d) + b) >= 0 at every integer d, exactly."""
    rng = np.random.default_rng(taps)
    alpha = rng.uniform(0.01, 3, 40).astype("float32") * rng.choice([-1, 1], 40).astype("float32")
    bias = rng.uniform(-taps, taps, 40).astype("float32") * np.abs(alpha)
    bias[:3] = [10 * taps, -10 * taps, 0.0]  # always on / always off / a tie at d = 0
    thr, flip = ka.binary_thresholds(alpha, bias, taps)
    d = np.arange(-taps, taps + 1).astype("float32")
    want = (alpha[:, None] * d[None, :] + bias[:, None]) >= 0
    got = np.where(flip[:, None] != 0, d[None, :] <= thr[:, None], d[None, :] >= thr[:, None])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(flip, alpha < 0)
    assert ka.threshold_ties(alpha, bias, taps) >= 1


@pytest.mark.parametrize("stride,padding,dilation", [(1, (1, 1, 1, 1), 1), (2, (2, 1, 0, 2), 1), (1, (2, 2, 2, 2), 2),
                                                      (3, (0, 0, 0, 0), 1)])
def test_bias_map_of_an_input_shift_under_zero_padding(stride, padding, dilation):
    """``conv(pad₀(x + t)) − conv(pad₀(x))`` against PyTorch, asymmetric padding included."""
    rng = np.random.default_rng(stride + dilation)
    w, t, x = rng.standard_normal((5, 4, 3, 3)), rng.standard_normal(4), rng.standard_normal((1, 4, 7, 8))
    top, left, bottom, right = padding

    def conv(a):
        padded = F.pad(torch.from_numpy(a), (left, right, top, bottom))
        return F.conv2d(padded, torch.from_numpy(w), stride=stride, dilation=dilation)[0].numpy()

    ref = conv(x + t.reshape(1, -1, 1, 1)) - conv(x)
    close(ka.conv_bias_map_of_input_shift(w, t, (7, 8), (stride, stride), padding, (dilation, dilation)), ref, 1e-9)
