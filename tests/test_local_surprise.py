"""Training a one-layer MLP is a memory of local surprise (refmem.optimizers.local_surprise, NL-2..6).

Independent routes: the gradient of ``L(W x)`` in ``W`` by central differences
(never through the hand-written ``dL/dy``) with its derived bound, and a
NumPy/SciPy reference (``scipy.special.softmax``). The level is solved in
closed form and iteratively; the two agree to 1e-10 relative (condition
number 1, solvers stop at 1e-12).
"""

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import refmem
from conftest import CPU_BACKENDS, to_numpy
from refmem.checks.gd_and_momentum import fd_gd_reference, layer_problem
from refmem.level import solve
from refmem.losses import LOSSES
from refmem.metrics import max_abs_error, rel_error
from refmem.objectives import Dot
from refmem.optimizers import local_surprise as ls

EPS = np.finfo(np.float64).eps
CLOSED_VS_ITERATIVE = 1e-10  # solvers stop at relative optimality 1e-12; the level's Hessian is I/eta (condition 1)


def ns(name):
    return refmem.backends.get_backend(name).namespace()


def np_grad_W(loss_name, W, x, t):
    """NumPy/SciPy reference for grad_W L(W x): (y - t) x^T or (sum(p) softmax(y) - p) x^T."""
    y = W @ x
    u = y - t if loss_name == "squared_error" else t.sum() * scipy.special.softmax(y) - t
    return np.outer(u, x)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@given(seed=st.integers(0, 2**32 - 1), d_out=st.integers(1, 5), d_in=st.integers(1, 5),
       eta=st.floats(min_value=0.01, max_value=2.0, allow_nan=False),
       x_scale=st.floats(min_value=0.1, max_value=3.0, allow_nan=False))
@settings(max_examples=15)
def test_gd_step_equals_closed_equals_iterative(backend, loss_name, seed, d_out, d_in, eta, x_scale):
    xp = ns(backend)
    W, x, t = layer_problem(seed, xp, loss_name, d_out=d_out, d_in=d_in)
    x = x_scale * x
    G_fd, fd_bound = ls.finite_difference_weight_gradient(loss_name, W, x, t)
    W_gd = W - eta * G_fd  # a GD step on the real loss, gradient from loss values only
    W_closed, rep = ls.surprise_step(loss_name, W, x, t, eta)
    assert rep.method == "closed" and type(W_closed) is type(W) and tuple(W_closed.shape) == (d_out, d_in)
    # eta * derived FD bound + rounding of the two updates (4 eps per operand)
    tol = eta * float(fd_bound) + 4 * EPS * (max_abs_error(W, 0 * W, xp) + eta * max_abs_error(G_fd, 0 * G_fd, xp))
    assert max_abs_error(W_closed, W_gd, xp) <= tol
    for solver in ("cg", "gd"):
        W_it, rep_it = ls.surprise_step(loss_name, W, x, t, eta, method="iterative", solver=solver)
        assert rep_it.converged and rep_it.method == "iterative"
        assert rel_error(W_it, W_closed, xp) <= CLOSED_VS_ITERATIVE
    # NumPy/SciPy reference: rounding of y (d_in terms), softmax and the update: 16 (d_in + d_out) eps of the scales
    Wn, xn, tn = to_numpy(W), to_numpy(x), to_numpy(t)
    ref = Wn - eta * np_grad_W(loss_name, Wn, xn, tn)
    scale = np.abs(Wn).max() + eta * (np.abs(Wn) @ np.abs(xn) + np.abs(tn) + 1).max() * np.abs(xn).max() * (1 + np.abs(tn).sum())
    assert np.abs(to_numpy(W_closed) - ref).max() <= 16 * (d_in + d_out) * EPS * scale


def test_sign_convention_and_descent(xp):
    # refmem's Dot is -<M k, v>; with v = -u it is NL-5's +<W x, u> (hand: -<W x, -u> = <W x, u>).
    W, x, t = layer_problem(21, xp, "squared_error", d_out=3, d_in=4)
    u = ls.local_surprise("squared_error", W, x, t)
    lhs = float(Dot().value(W, x, ls.surprise_value(u), xp))
    Wn, xn, un = to_numpy(W), to_numpy(x), to_numpy(u)
    assert abs(lhs - float((Wn @ xn) @ un)) <= 8 * 4 * EPS * np.abs(Wn).max() * np.abs(xn).sum() * np.abs(un).sum()
    # descent lemma: with eta <= 1 / (curvature ||x||^2) the step lowers the loss by >= eta/2 ||g||^2
    eta = 1.0 / float(np.sum(xn * xn))  # squared error: curvature 1
    W1, _ = ls.surprise_step("squared_error", W, x, t, eta)
    L0 = float(ls.loss_of_weights("squared_error", W, x, t))
    L1 = float(ls.loss_of_weights("squared_error", W1, x, t))
    g = np.outer(to_numpy(u), xn)
    assert L1 <= L0 - 0.5 * eta * np.sum(g * g) + 16 * EPS * L0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@given(seed=st.integers(0, 2**32 - 1), N=st.integers(1, 10), eta=st.floats(min_value=0.01, max_value=0.5, allow_nan=False))
@settings(max_examples=8)
def test_training_run_equals_sequence_of_level_solves(backend, loss_name, seed, N, eta):
    xp = ns(backend)
    W_0, X, T = layer_problem(seed, xp, loss_name, d_out=3, d_in=4, N=N)
    Ws, reports = ls.train(loss_name, W_0, X, T, eta)
    assert tuple(Ws.shape) == (N + 1, 3, 4) and len(reports) == N
    ref, bounds = fd_gd_reference(loss_name, W_0, X, T, eta, xp)  # GD with FD gradients, with its error majorant
    for i in range(N + 1):
        err = float(xp.sqrt(xp.sum((Ws[i, :, :] - ref[i]) ** 2)))
        assert err <= bounds[i], (i, err, bounds[i])
    Ws_it, reps = ls.train(loss_name, W_0, X, T, eta, method="iterative")
    assert all(r.converged for r in reps)
    assert rel_error(Ws_it, Ws, xp) <= CLOSED_VS_ITERATIVE


def test_training_with_per_step_learning_rates(xp):
    # eta_{t+1} per step (NL-3): each step equals the single-step level with that eta.
    W_0, X, T = layer_problem(22, xp, "softmax_cross_entropy", d_out=3, d_in=4, N=5)
    etas = xp.asarray([0.5, 0.1, 0.3, 0.05, 0.2])
    Ws, _ = ls.train("softmax_cross_entropy", W_0, X, T, etas)
    W = W_0
    for i, e in enumerate([0.5, 0.1, 0.3, 0.05, 0.2]):
        W, _ = ls.surprise_step("softmax_cross_entropy", W, X[i, :], T[i, :], e)
        assert max_abs_error(Ws[i + 1, :, :], W, xp) == 0.0  # the same arithmetic in the same order


def test_batched_layers_match_one_by_one(xp):
    W, x, t = layer_problem(23, xp, "squared_error", batch=(3,), d_out=2, d_in=5)
    W1, _ = ls.surprise_step("squared_error", W, x, t, 0.4)
    for b in range(3):
        Wb, _ = ls.surprise_step("squared_error", W[b, :, :], x[b, :], t[b, :], 0.4)
        assert max_abs_error(W1[b, :, :], Wb, xp) <= 2 * EPS * max_abs_error(Wb, 0 * Wb, xp)


def test_nl6_printed_form_differs_from_gd(xp):
    # Erratum NL-6: the printed objective pairs u_{t+1} with the previous key x_t.
    W, X, T = layer_problem(24, xp, "softmax_cross_entropy", d_out=3, d_in=4, N=2)
    eta = 0.7
    x_prev, x, t = X[0, :], X[1, :], T[1, :]
    printed, _ = ls.nl6_printed_step("softmax_cross_entropy", W, x_prev, x, t, eta)
    G, fd_bound = ls.finite_difference_weight_gradient("softmax_cross_entropy", W, x, t)
    W_gd = W - eta * G
    tol = eta * float(fd_bound) + 4 * EPS * (max_abs_error(W, 0 * W, xp) + eta * max_abs_error(G, 0 * G, xp))
    # hand derivation: printed - GD = eta u (x_{t+1} - x_t)^T, with u from SciPy
    Wn, xn, xpn, tn = to_numpy(W), to_numpy(x), to_numpy(x_prev), to_numpy(t)
    u = tn.sum() * scipy.special.softmax(Wn @ xn) - tn
    predicted = eta * np.outer(u, xn - xpn)
    diff = to_numpy(printed) - to_numpy(W_gd)
    assert np.abs(diff - predicted).max() <= tol + 16 * 8 * EPS * (np.abs(Wn).max() + eta * np.abs(predicted).max())
    assert np.abs(diff).max() > 1e4 * tol  # far from a GD step
    # with x_t = x_{t+1} the printed form is the GD step: the erratum is only the index
    same, _ = ls.nl6_printed_step("softmax_cross_entropy", W, x, x, t, eta)
    assert max_abs_error(same, W_gd, xp) <= tol


def test_nl6_printed_form_is_not_a_descent_step(xp):
    # Consequence of the erratum: pairing u_{t+1} with an unrelated x_t can raise the loss at x_{t+1}
    # (first-order change -eta <u x_t^T, u x_{t+1}^T> = -eta ||u||^2 <x_t, x_{t+1}> > 0 when the keys point apart).
    W = xp.asarray([[0.3, -0.2], [0.1, 0.4]])
    x, x_prev = xp.asarray([1.0, 0.5]), xp.asarray([-1.0, -0.4])  # <x_t, x_{t+1}> = -1.2 < 0
    t = xp.asarray([1.0, -1.0])
    L0 = float(ls.loss_of_weights("squared_error", W, x, t))
    printed, _ = ls.nl6_printed_step("squared_error", W, x_prev, x, t, 0.1)
    gd, _ = ls.surprise_step("squared_error", W, x, t, 0.1)
    assert float(ls.loss_of_weights("squared_error", printed, x, t)) > L0 > float(ls.loss_of_weights("squared_error", gd, x, t))


def test_bad_inputs(xp):
    W, X, T = layer_problem(25, xp, "squared_error", d_out=3, d_in=4, N=3)
    with pytest.raises(ValueError, match="targets"):
        ls.train("squared_error", W, X, T[:2, :], 0.1)
    with pytest.raises(ValueError, match="eta"):
        ls.train("squared_error", W, X, T, xp.asarray([0.1, 0.2]))
    with pytest.raises(ValueError, match="eta"):
        ls.surprise_step("squared_error", W, X[0, :], T[0, :], 0.0)
    with pytest.raises(ValueError, match="x"):
        ls.surprise_step("squared_error", W, X[0, :3], T[0, :], 0.1)
    with pytest.raises(ValueError, match="target"):
        ls.surprise_step("squared_error", W, X[0, :], T[0, :2], 0.1)
    with pytest.raises(ValueError, match="loss"):
        ls.surprise_step("hinge", W, X[0, :], T[0, :], 0.1)
    with pytest.raises(TypeError, match="W"):
        ls.layer_output([[1.0]], X[0, :1])
    with pytest.raises(ValueError, match="x"):
        ls.surprise_step("squared_error", W, X[0, :] * float("nan"), T[0, :], 0.1)


def test_mixed_backends_rejected():
    import array_api_strict as xs

    with pytest.raises(TypeError, match="W"):
        ls.surprise_step("squared_error", np.zeros((3, 4)), xs.asarray([1.0, 0.0, 0.0, 0.0]), xs.asarray([0.0, 0.0, 0.0]), 0.1)


def test_level_is_the_stated_one():
    level = ls.local_surprise_level(0.3)
    assert level.objective.name == "dot" and level.retention.name == "local_l2" and level.name == "mlp_local_surprise"
    # the level's stated objective at W is +<W x, u> + 1/(2 eta)||W - W_t||^2 (solved by the generic solver)
    W = np.eye(2)
    W_new, _ = solve(level, W, np.array([1.0, 0.0]), ls.surprise_value(np.array([0.0, 2.0])))
    assert np.array_equal(W_new, np.array([[1.0, 0.0], [-0.6, 1.0]]))  # hand: W - 0.3 * (0, 2)^T (1, 0)
