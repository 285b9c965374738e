"""kernels.views.carve (a reshaped view built as LLVM IR) against numpy's slice-and-reshape."""
import numba
import numpy as np
import pytest

from fastrnn.kernels.views import carve


@numba.njit
def _carve2(buf, start, rows, cols):
    return carve(buf, start, (rows, cols))


@numba.njit
def _carve3(buf, start, a, b, c):
    return carve(buf, start, (a, b, c))


@numba.njit
def _fill(buf, start, rows, cols):
    view = carve(buf, start, (rows, cols))
    for i in range(rows):
        for j in range(cols):
            view[i, j] = i * 100 + j


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_carve_is_the_reshaped_slice(dtype):
    buf = np.arange(1000).astype(dtype)
    for start, rows, cols in [(0, 1, 1), (0, 10, 7), (37, 3, 16), (900, 4, 25), (5, 0, 3)]:
        got = _carve2(buf, start, rows, cols)
        want = buf[start:start + rows * cols].reshape(rows, cols)
        assert got.shape == want.shape and got.strides == want.strides
        np.testing.assert_array_equal(got, want)
    got = _carve3(buf, 11, 2, 3, 5)
    np.testing.assert_array_equal(got, buf[11:41].reshape(2, 3, 5))
    assert got.flags.c_contiguous


def test_carve_views_the_buffer_and_reads_any_c_array_flat():
    buf = np.zeros(64, np.float32)
    _fill(buf, 8, 3, 4)
    np.testing.assert_array_equal(buf[8:20].reshape(3, 4), np.add.outer(np.arange(3) * 100,
                                                                       np.arange(4)))
    assert not buf[:8].any() and not buf[20:].any()
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(_carve2(x, 0, 6, 4), x.reshape(6, 4))


def test_carve_refuses_non_contiguous_arrays():
    with pytest.raises(numba.core.errors.TypingError, match="C-contiguous"):
        _carve2(np.zeros(20, np.float32)[::2], 0, 2, 5)
