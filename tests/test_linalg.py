"""Small array helpers against NumPy's own versions."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refmem import backends
from refmem.linalg import fro_norm, inner, matvec, outer, sign

from conftest import to_numpy


@given(arrays(np.float64, (3, 4), elements=st.floats(-1e300, 1e300, allow_subnormal=True) | st.just(0.0) | st.just(-0.0)))
def test_sign_matches_numpy(xp, a):
    assert np.array_equal(to_numpy(sign(xp.asarray(a), xp)), np.sign(a))


def test_sign_keeps_nan(xp):
    out = to_numpy(sign(xp.asarray([np.nan, -2.0, 0.0, np.inf]), xp))
    assert np.isnan(out[0]) and list(out[1:]) == [-1.0, 0.0, 1.0]


def test_products_match_numpy(xp):
    g = np.random.default_rng(0)
    M, k, v = g.standard_normal((2, 3, 4)), g.standard_normal((2, 4)), g.standard_normal((2, 3))
    X = xp.asarray(M)
    # each is a sum of at most 12 products of O(1) numbers: 16 eps covers the summation order
    tol = 16 * np.finfo(float).eps * 12
    assert np.allclose(to_numpy(matvec(X, xp.asarray(k))), np.einsum("bij,bj->bi", M, k), rtol=0, atol=tol)
    assert np.array_equal(to_numpy(outer(xp.asarray(v), xp.asarray(k))), v[:, :, None] * k[:, None, :])
    assert np.allclose(to_numpy(inner(X, X, xp)), np.sum(M * M, axis=(1, 2)), rtol=tol)
    assert np.allclose(to_numpy(fro_norm(X, xp)), np.linalg.norm(M, axis=(1, 2)), rtol=tol)


def test_host_resident_backends():
    import array_api_compat.numpy as npx
    import array_api_strict as sx

    assert backends.host_resident(npx) and backends.host_resident(sx)
