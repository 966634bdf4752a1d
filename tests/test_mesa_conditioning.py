"""Mesa with a tiny regulariser: the recurrent, iterative and chunked forms refuse it the same way, naming lam."""

import numpy as np
import pytest

from refmem.memories.mesa import condition_bound, mesa_iterative, mesa_recurrent
from refmem.chunked.mesa import mesa_chunked


def _inputs(seed=0, T=5, d_k=3, d_v=2):
    g = np.random.default_rng(seed)
    return g.standard_normal((2, T, d_k)), g.standard_normal((2, T, d_k)), g.standard_normal((2, T, d_v))


@pytest.mark.parametrize("form", [mesa_recurrent, mesa_iterative, mesa_chunked], ids=lambda f: f.__name__)
def test_tiny_lam_is_a_clear_error_in_every_form(form):
    # the recurrent form raised numpy's LinAlgError "Singular matrix" while the chunked one returned finite outputs
    q, k, v = _inputs()
    with pytest.raises(ValueError, match=r"lam = 1e-12 .* condition number up to .* use lam >="):
        form(q, k, v, 1e-12)


def test_condition_bound_by_hand():
    k = np.array([[[3.0, 4.0], [0.0, 1.0]]])  # sum ||k_i||^2 = 25 + 1 = 26
    H0 = np.array([[[2.0, 0.0], [0.0, 0.0]]])  # ||H_0||_F = 2
    assert condition_bound(np.asarray(0.5), k, H0, np) == (26 + 2 + 0.5) / 0.5


def test_smallest_accepted_lam_agrees_across_forms():
    # at the suggested lam the forms agree to the accuracy the bound promises (kappa eps, with slack 64)
    q, k, v = _inputs(1)
    H0 = np.zeros((2, 3, 3))
    lam = 2.0 * condition_bound(np.asarray(1.0), k, H0, np) * float(np.sqrt(np.finfo(float).eps))  # kappa ~ 1/(2 sqrt eps)
    o_r, _ = mesa_recurrent(q, k, v, lam)
    o_c, _ = mesa_chunked(q, k, v, lam, chunk_size=2)
    kappa = condition_bound(np.asarray(lam), k, H0, np)
    assert np.max(np.abs(o_r - o_c)) <= 64 * kappa * np.finfo(float).eps * np.max(np.abs(o_r))
