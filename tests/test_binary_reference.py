import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# The bit-level binary reference (bnncube.converters.binary_reference) is exact: packing round
# trips, popcount matches Python's, and the packed XOR/popcount convolution equals the plain
# +1/-1 convolution (zero padding and one padding) and QKeras' own binary Conv2D.

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnncube.converters.binary_reference import (  # noqa: E402
    binary_conv_accumulate,
    bitpack,
    pack_filters,
    popcount32,
    unpack,
)

CHANNELS = (1, 3, 16, 24, 31, 32, 33, 40, 64, 100)


def _words(c: int) -> int:
    return (c + 31) // 32


# ---------------------------------------------------------------------------------- packing


@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("zp", [0, -5])
def test_bitpack_int8_round_trip(c: int, zp: int) -> None:
    rng = np.random.default_rng(c * 7 + zp)
    x = rng.integers(-128, 128, size=(2, 3, 4, c), dtype=np.int8)
    x[0, 0, 0, :] = zp  # the threshold itself is +1
    p = bitpack(x, zero_point=zp)
    assert p.dtype == np.uint32 and p.shape == (2, 3, 4, _words(c))
    expected = np.where(x.astype(np.int64) < zp, -1, 1).astype(np.int8)
    u = unpack(p, c)
    assert u.dtype == np.int8 and np.array_equal(u, expected)
    assert np.all(u[0, 0, 0] == 1)
    assert np.array_equal(bitpack(u), p)  # +1/-1 values pack back to the same words
    # padding bits beyond C are 0
    if c % 32:
        assert np.all(p[..., -1] >> np.uint32(c % 32) == 0)


@pytest.mark.parametrize("c", CHANNELS)
def test_bitpack_float_round_trip(c: int) -> None:
    rng = np.random.default_rng(c)
    x = rng.standard_normal((1, 5, 3, c)).astype(np.float32)
    x[0, 0, :, :] = 0.0
    x[0, 1, :, :] = -0.0
    p = bitpack(x)
    u = unpack(p, c)
    assert np.array_equal(u, np.where(x < 0, -1, 1).astype(np.int8))
    assert np.all(p[0, :2] == 0)  # exact zeros (either sign) are +1, bit 0
    if c % 32:
        assert np.all(p[..., -1] >> np.uint32(c % 32) == 0)


def test_bitpack_hand_example() -> None:
    # channels: + - + + - then +1 up to channel 31 which is -1; channel 32 is -1, 33 is +1
    v = np.ones(34, np.int8)
    v[[1, 4, 31, 32]] = -1
    p = bitpack(v.reshape(1, 1, 1, 34))
    assert p.shape == (1, 1, 1, 2)
    assert int(p[0, 0, 0, 0]) == (1 << 1) + (1 << 4) + (1 << 31) == 0x80000012
    assert int(p[0, 0, 0, 1]) == 1
    # int8 with a zero point: 3 < 4 is -1, 4 and 5 are +1
    q = np.array([3, 4, 5, -128, 127], np.int8).reshape(1, 1, 1, 5)
    assert int(bitpack(q, zero_point=4)[0, 0, 0, 0]) == 0b01001
    # all -1 over 32 channels fills the word
    assert int(bitpack(-np.ones((1, 1, 1, 32), np.float32))[0, 0, 0, 0]) == 0xFFFFFFFF


def test_pack_filters() -> None:
    rng = np.random.default_rng(3)
    w = np.where(rng.random((5, 3, 3, 40)) < 0.5, -1, 1).astype(np.int8)
    p = pack_filters(w)
    assert p.dtype == np.uint32 and p.shape == (5, 3, 3, 2)
    assert np.array_equal(unpack(p, 40), w)
    assert np.all(p[..., -1] >> np.uint32(8) == 0)
    with pytest.raises(ValueError):
        pack_filters(np.zeros((1, 1, 1, 3), np.int8))


def test_unpack_checks_word_count() -> None:
    with pytest.raises(ValueError):
        unpack(np.zeros((1, 1, 1, 2), np.uint32), 32)


# ---------------------------------------------------------------------------------- popcount


def test_popcount32() -> None:
    rng = np.random.default_rng(0)
    edge = np.array([0, 0xFFFFFFFF, 1 << 31, 1, 0x55555555, 0xAAAAAAAA, 0x0F0F0F0F, 0x7FFFFFFF])
    vals = np.concatenate([edge, rng.integers(0, 2**32, size=1992, dtype=np.uint64)])
    words = vals.astype(np.uint32)
    got = popcount32(words.reshape(40, -1)).reshape(-1)
    assert np.array_equal(got, [bin(int(v)).count("1") for v in words])
    assert popcount32(np.uint32(0xFFFFFFFF)) == 32


# ---------------------------------------------------------------------------------- conv


def _float_conv(
    x_pm1: np.ndarray,
    w_pm1: np.ndarray,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    fill: float,
) -> np.ndarray:
    """Plain convolution of +1/-1 values, NHWC x OHWI, padded with ``fill``."""
    top, bottom, left, right = pads
    xp = np.pad(
        x_pm1.astype(np.float64),
        ((0, 0), (top, bottom), (left, right), (0, 0)),
        constant_values=fill,
    )
    o, kh, kw, _ = w_pm1.shape
    sh, sw = strides
    oh = (xp.shape[1] - kh) // sh + 1
    ow = (xp.shape[2] - kw) // sw + 1
    out = np.zeros((x_pm1.shape[0], oh, ow, o))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            out += np.einsum("nhwc,oc->nhwo", patch, w_pm1[:, i, j].astype(np.float64))
    return out


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


CONV_CASES = [
    # (H, W, C, O, k, stride, same)
    (7, 7, 3, 5, 3, 1, True),
    (7, 7, 16, 1, 3, 2, True),
    (9, 6, 24, 24, 3, 1, True),
    (9, 6, 32, 5, 3, 2, True),
    (7, 7, 40, 5, 3, 1, False),
    (9, 6, 64, 24, 3, 2, False),
    (7, 7, 40, 24, 1, 1, False),
    (9, 6, 3, 5, 1, 2, False),
    (9, 6, 64, 1, 3, 1, True),
    (8, 8, 33, 5, 3, 2, True),
]


@pytest.mark.parametrize("h,w,c,o,k,s,same", CONV_CASES)
@pytest.mark.parametrize("pad_value", [0, 1])
def test_binary_conv_matches_float(
    h: int, w: int, c: int, o: int, k: int, s: int, same: bool, pad_value: int
) -> None:
    rng = np.random.default_rng(h * 1000 + c * 10 + o + s)
    x = np.where(rng.random((2, h, w, c)) < 0.5, -1, 1).astype(np.int8)
    wt = np.where(rng.random((o, k, k, c)) < 0.5, -1, 1).astype(np.int8)
    pads = (*_same_pads(h, k, s), *_same_pads(w, k, s)) if same else (0, 0, 0, 0)
    got = binary_conv_accumulate(
        bitpack(x), c, pack_filters(wt), (k, k), (s, s), pads, pad_value=pad_value
    )
    ref = _float_conv(x, wt, (s, s), pads, fill=float(pad_value))
    assert got.dtype == np.int32 and got.shape == ref.shape
    assert np.array_equal(got, ref.astype(np.int64))
    assert np.all(np.abs(got) <= k * k * c)


def test_binary_conv_extremes() -> None:
    # all equal -> +K; all different -> -K; zero padding at a corner keeps 4 of 9 taps
    c = 40
    x = -np.ones((1, 4, 4, c), np.int8)
    w = -np.ones((2, 3, 3, c), np.int8)
    w[1] = 1
    acc = binary_conv_accumulate(bitpack(x), c, pack_filters(w), (3, 3), (1, 1), (1, 1, 1, 1), 0)
    assert acc[0, 1, 1, 0] == 9 * c and acc[0, 1, 1, 1] == -9 * c
    assert acc[0, 0, 0, 0] == 4 * c and acc[0, 0, 0, 1] == -4 * c
    acc1 = binary_conv_accumulate(bitpack(x), c, pack_filters(w), (3, 3), (1, 1), (1, 1, 1, 1), 1)
    # one padding: 5 padded taps of +1 against w = -1 give -5c, against w = +1 give +5c
    assert acc1[0, 0, 0, 0] == 4 * c - 5 * c and acc1[0, 0, 0, 1] == -4 * c + 5 * c


# ---------------------------------------------------------------------------------- QKeras


def test_binary_conv_matches_qkeras() -> None:
    import tensorflow as tf
    from qkeras import QActivation, QConv2D, binary

    h, w, c, o = 9, 6, 40, 5
    tf.random.set_seed(0)
    inp = tf.keras.Input((h, w, c))
    y = QActivation(binary(alpha=1))(inp)
    y = QConv2D(o, 3, padding="same", use_bias=False, kernel_quantizer=binary(alpha=1))(y)
    model = tf.keras.Model(inp, y)

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, h, w, c)).astype(np.float32)
    x[np.abs(x) < 1e-3] = 0.5  # no exact zeros
    out = model.predict(x, verbose=0)
    assert np.array_equal(out, np.rint(out))  # sums of +1/-1 are exact in float32

    kernel = model.layers[-1].kernel.numpy()  # HWIO
    wq = binary(alpha=1)(tf.constant(kernel)).numpy()
    w_pm1 = np.where(kernel < 0, -1, 1).astype(np.int8)  # sign with 0 -> +1
    assert np.array_equal(wq, w_pm1)
    w_ohwi = np.transpose(w_pm1, (3, 0, 1, 2))

    acc = binary_conv_accumulate(
        bitpack(x), c, pack_filters(w_ohwi), (3, 3), (1, 1), (1, 1, 1, 1), pad_value=0
    )
    assert np.array_equal(acc, np.rint(out).astype(np.int32))


def test_qkeras_binary_zero_is_plus_one() -> None:
    import tensorflow as tf
    from qkeras import binary

    v = binary(alpha=1)(tf.constant([-1.0, -0.0, 0.0, 1e-30, -1e-30])).numpy()
    assert np.array_equal(v, [-1, 1, 1, 1, -1])
    assert np.array_equal(unpack(bitpack(np.array([-1.0, -0.0, 0.0, 1e-30, -1e-30])), 5), v)
