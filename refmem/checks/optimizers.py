r"""``refmem verify`` checks for the optimisers of :data:`refmem.optimizers.OPTIMIZERS` (NL 2.3, NLx 4, MATH.md 6).

For each optimiser: closed == iterative over a short run, closed == the
textbook update (torch.optim's documented algorithm, written out here
with ``xp`` operations and no refmem code), and the errata its spec
records. Problems are drawn with NumPy and moved to the backend.
"""

from __future__ import annotations

import numpy as np  # randomness only

from ..metrics import max_abs_error, rel_error
from ..optimizers import make
from ..optimizers import moment_memory as mm
from ..problems import to_backend
from .registry import register_check

EPS = float(np.finfo(np.float64).eps)
STEPS = 40


def _noisy_quadratic(seed, shape, T, xp):
    """``g_t(W) = (W - target) + noise_t``: noise keeps the moments away from zero (a relative test measures rounding)."""
    g = np.random.default_rng(seed)
    target = to_backend(g.standard_normal(shape), xp)
    noise = [to_backend(0.5 * g.standard_normal(shape), xp) for _ in range(T)]
    W0 = to_backend(g.standard_normal(shape), xp)
    return W0, (lambda W, t: (W - target) + noise[t])


def _trajectory(opt, W0, grad, T, method="closed"):
    W, state, out = W0, opt.init(W0), [W0]
    for t in range(T):
        W, state, _ = opt.step(W, grad(W, t), state, method=method)
        out.append(W)
    return out


def _max_rel(a, b, xp):
    return max(rel_error(x, y, xp) for x, y in zip(a, b))


def _gradients_and_running_average(seed, shape, T, beta, xp, drift=0.0):
    """``T`` standard normal gradients (plus ``drift * t``) and their running average :func:`.ema_step` from zero."""
    g = np.random.default_rng(seed)
    ys = [to_backend(g.standard_normal(shape) + drift * t, xp) for t in range(T)]
    m = 0 * ys[0]
    for y in ys:
        m = mm.ema_step(m, y, beta)
    return ys, m


# ------------------------------------------------------------------ textbook updates (torch.optim's documented ones)


def _textbook(name, hp, W0, grad, T, xp):
    W, out = W0, [W0]
    z = 0 * W0
    m, v, buf, gbar, s = z, z, None, z, z + hp.get("initial_accumulator_value", 0.0)
    for t in range(1, T + 1):
        g = grad(W, t - 1)
        if name == "sgd":
            g = g + hp.get("weight_decay", 0.0) * W
            mu = hp.get("momentum", 0.0)
            if mu:
                buf = g if buf is None else mu * buf + (1 - hp.get("dampening", 0.0)) * g
                g = g + mu * buf if hp.get("nesterov") else buf
            W = W - hp["lr"] * g
        elif name in ("adam", "adamw"):
            b1, b2 = hp.get("betas", (0.9, 0.999))
            if name == "adamw":
                W = W * (1 - hp["lr"] * hp.get("weight_decay", 1e-2))
            else:
                g = g + hp.get("weight_decay", 0.0) * W
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            W = W - hp["lr"] * (m / (1 - b1 ** t)) / (xp.sqrt(v / (1 - b2 ** t)) + hp.get("eps", 1e-8))
        elif name == "rmsprop":
            a, mu = hp.get("alpha", 0.99), hp.get("momentum", 0.0)
            g = g + hp.get("weight_decay", 0.0) * W
            v = a * v + (1 - a) * g * g
            if hp.get("centered"):
                gbar = a * gbar + (1 - a) * g
                avg = xp.sqrt(v - gbar * gbar) + hp.get("eps", 1e-8)
            else:
                avg = xp.sqrt(v) + hp.get("eps", 1e-8)
            if mu > 0:
                buf = (z if buf is None else buf) * mu + g / avg
                W = W - hp["lr"] * buf
            else:
                W = W - hp["lr"] * g / avg
        elif name == "adagrad":
            g = g + hp.get("weight_decay", 0.0) * W
            clr = hp["lr"] / (1 + (t - 1) * hp.get("lr_decay", 0.0))
            s = s + g * g
            W = W - clr * g / (xp.sqrt(s) + hp.get("eps", 1e-10))
        out.append(W)
    return out


TEXTBOOK_CASES = {
    "sgd": dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "sgd_nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "adam": dict(lr=1e-2, weight_decay=0.1),
    "adamw": dict(lr=1e-2, weight_decay=0.1),
    "rmsprop": dict(lr=1e-2, momentum=0.5, centered=True, weight_decay=0.01),
    "adagrad": dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01),
}


def _register_textbook(key, hp):
    name = key.split("_")[0]

    # the same few flops per entry per step on both sides, a 1-Lipschitz gradient map, small steps: <= 16 eps per step
    @register_check(name, f"{key}: closed == textbook (torch's documented update), {STEPS} steps", 16 * STEPS * EPS)
    def textbook(xp):
        W0, grad = _noisy_quadratic(20, (2, 3, 4), STEPS, xp)
        return _max_rel(_trajectory(make(name, **hp), W0, grad, STEPS), _textbook(name, hp, W0, grad, STEPS, xp), xp)

    # every level's CG stops at relative optimality 1e-12 (condition 1): 1e-12 per step, adding up linearly
    @register_check(name, f"{key}: closed == iterative, {STEPS} steps", STEPS * 1e-12)
    def closed_iterative(xp):
        W0, grad = _noisy_quadratic(21, (2, 3, 4), STEPS, xp)
        opt = make(name, **hp)
        return _max_rel(_trajectory(opt, W0, grad, STEPS, "iterative"), _trajectory(opt, W0, grad, STEPS), xp)


for _key, _hp in TEXTBOOK_CASES.items():
    _register_textbook(_key, _hp)


# ------------------------------------------------------------------ the moment memories


@register_check("adam", "bias-corrected moment == argmin of the discounted least-squares memory (CG)", 1e-12)
def _moment_is_minimiser(xp):
    ys, m = _gradients_and_running_average(22, (3, 4), 30, 0.9, xp)
    x, _ = mm.discounted_least_squares_argmin(tuple(ys), 0.9)
    return rel_error(x, mm.bias_corrected(m, 0.9, 30), xp)


@register_check("adam", "erratum (plain sums): the plain-sum memory's minimiser is the mean, not Adam's moment")
def _plain_sums(xp):
    ys, m = _gradients_and_running_average(23, (2, 3), 30, 0.9, xp, drift=0.1)  # a drifting gradient
    plain, _ = mm.plain_sum_argmin(tuple(ys))
    mean = sum(ys[1:], ys[0]) / 30.0
    gap = max_abs_error(mm.bias_corrected(m, 0.9, 30), mean, xp)
    if not gap > 0.5:
        raise AssertionError(f"Adam's moment is within {gap:.3g} of the plain mean: the plain-sum claim would hold")
    # the plain-sum minimiser is the arithmetic mean (CG at 1e-12 relative)
    return max_abs_error(plain, mean, xp), 1e-12 * max_abs_error(mean, 0 * mean, xp)


@register_check("rmsprop", "uncorrected average == memory with a zero past; bias correction removes that past", 1e-12)
def _zero_past(xp):
    ys, v = _gradients_and_running_average(24, (2, 3), 12, 0.9, xp)
    x, _ = mm.discounted_least_squares_argmin(tuple(ys), 0.9, zero_prehistory=True)
    return rel_error(x, v, xp)


# ------------------------------------------------------------------ Muon and its orthogonalisation level


def _spread(seed, n, kappa, xp):
    g = np.random.default_rng(seed)
    U, _ = np.linalg.qr(g.standard_normal((n, n)))
    V, _ = np.linalg.qr(g.standard_normal((n, n)))
    s = np.logspace(0, -np.log10(kappa), n)
    return to_backend((U * s) @ V.T, xp), s


@register_check("muon", "nearest orthogonal matrix: polar factor (SVD) == cubic Newton-Schulz, kappa 1e4")
def _polar_closed_iterative(xp):
    from ..optimizers import orthogonalization as orth

    M, _ = _spread(30, 16, 1e4, xp)
    O, rep = orth.newton_schulz_polar(M)
    # the polar factor's sensitivity to rounding is ~ eps kappa; 16 k eps kappa covers the SVD and NS products
    return max_abs_error(O, orth.polar_factor(M), xp), 1e-12 + 16 * 16 * EPS * 1e4


@register_check("muon", "quintic Newton-Schulz maps each singular value by q^5 (q(1) = 0.701: no fixed point at 1)")
def _quintic_map(xp):
    from ..optimizers import orthogonalization as orth

    M, s = _spread(31, 16, 1e2, xp)
    Q = orth.newton_schulz_quintic(M)
    got = np.sort(_to_numpy(xp.linalg.svdvals(Q), xp))  # (16,) singular values of the output
    a, b, c = orth.QUINTIC_COEFFICIENTS
    x = s / np.linalg.norm(s)
    for _ in range(5):
        x = a * x + b * x ** 3 + c * x ** 5  # the scalar polynomial, written out
    want = np.sort(x)
    if not np.abs(want - 1).max() > 0.3:
        raise AssertionError("the quintic's output is within 0.3 of orthogonal at kappa 1e2: erratum not shown")
    return float(np.abs(got - want).max()), 1e-12


def _to_numpy(a, xp):
    return np.asarray(a) if type(a).__module__.startswith("numpy") else np.from_dlpack(a)


def _textbook_muon(hp, W0, grad, T, xp):
    a, b, c = (3.4445, -4.775, 2.0315)
    lr, wd, mu = hp["lr"], hp.get("weight_decay", 0.1), hp.get("momentum", 0.95)
    A, B = W0.shape[-2], W0.shape[-1]
    ratio = (A / B if A > B else 1.0) ** 0.5
    W, buf, out = W0, 0 * W0, [W0]
    for t in range(T):
        g = grad(W, t)
        buf = mu * buf + g
        X = g + mu * buf
        X = xp.matrix_transpose(X) if A > B else X
        X = X / xp.maximum(xp.sqrt(xp.sum(X * X, axis=(-2, -1)))[..., None, None], xp.asarray(1e-7, dtype=X.dtype))
        for _ in range(5):
            G = X @ xp.matrix_transpose(X)
            X = a * X + (b * G + c * (G @ G)) @ X
        O = xp.matrix_transpose(X) if A > B else X
        W = W - lr * wd * W
        W = W - lr * ratio * O
        out.append(W)
    return out


@register_check("muon", f"muon (quintic) == torch's documented update, {STEPS} steps", 32 * STEPS * EPS)
def _muon_textbook(xp):
    hp = dict(lr=0.02)
    W0, grad = _noisy_quadratic(32, (2, 5, 3), STEPS, xp)
    return _max_rel(_trajectory(make("muon", **hp), W0, grad, STEPS), _textbook_muon(hp, W0, grad, STEPS, xp), xp)


@register_check("muon", f"muon (polar) closed (SVD) == iterative (cubic Newton-Schulz), {STEPS} steps")
def _muon_polar(xp):
    W0, grad = _noisy_quadratic(33, (2, 4, 3), STEPS, xp)
    opt = make("muon", lr=0.02, orthogonalize="polar")
    # this run's Nesterov momenta have kappa < 1e3 (seeded; the polar factors' sensitivity ~ eps kappa per step)
    return (_max_rel(_trajectory(opt, W0, grad, STEPS, "iterative"), _trajectory(opt, W0, grad, STEPS), xp),
            STEPS * (1e-12 + 16 * 3 * EPS * 1e3))


# ------------------------------------------------------------------ M3 (NLx Algorithm 1)


def _algorithm_1(hp, W0, grad, T, xp):
    """Algorithm 1 with its two loops (chunks, steps); the slow memory from the previous chunk's f gradients."""
    b1, b2, b3 = hp.get("betas", (0.9, 0.999, 0.9))
    f, lr, alpha, eps = hp["frequency"], hp["lr"], hp.get("alpha", 1.0), hp.get("eps", 1e-8)

    def polar(M):
        U, _, Vh = xp.linalg.svd(M, full_matrices=False)
        return U @ Vh

    W, M1, V, M2, O2 = W0, 0 * W0, 0 * W0, 0 * W0, 0 * W0
    grads, out, t = [], [W0], 0
    for k in range(-(-T // f)):
        if k > 0:
            M2 = M2 + b3 * sum(grads[(k - 1) * f + 1:k * f], grads[(k - 1) * f])
            O2 = polar(M2)
        for _ in range(min(f, T - t)):
            g = grad(W, t)
            grads.append(g)
            M1 = M1 + b1 * g
            V = V + b2 * g * g
            W = W - lr * (polar(M1) + alpha * O2) / (xp.sqrt(V) + eps)
            out.append(W)
            t += 1
    return out


M3_CASE = dict(lr=1e-2, frequency=7, alpha=0.5)


# one SVD per orthogonalisation on both sides; the polar factor's sensitivity ~ eps kappa, kappa < 1e3 on this
# seeded run (the accumulated momenta are dominated by the drift): 16 k eps kappa per step, linear
@register_check("m3", f"m3 == Algorithm 1 written with its two loops, {STEPS} steps, f = 7",
                STEPS * (1e-12 + 16 * 3 * EPS * 1e3))
def _m3_textbook(xp):
    W0, grad = _noisy_quadratic(40, (2, 4, 3), STEPS, xp)
    return _max_rel(_trajectory(make("m3", **M3_CASE), W0, grad, STEPS), _algorithm_1(M3_CASE, W0, grad, STEPS, xp), xp)


@register_check("m3", f"m3 closed == iterative (CG levels, certified Newton-Schulz), {STEPS} steps",
                STEPS * (1e-12 + 16 * 3 * EPS * 1e3))
def _m3_closed_iterative(xp):
    W0, grad = _noisy_quadratic(41, (2, 4, 3), STEPS, xp)
    opt = make("m3", **M3_CASE)
    return _max_rel(_trajectory(opt, W0, grad, STEPS, "iterative"), _trajectory(opt, W0, grad, STEPS), xp)


@register_check("m3", "erratum: the printed slow sum counts f + 1 gradients; refmem's M2 holds exactly f", 0.0)
def _m3_slow_terms(xp):
    f = 5
    opt = make("m3", lr=1e-2, frequency=f, betas=(0.9, 0.999, 1.0))
    g_np = np.random.default_rng(42)
    W = to_backend(g_np.standard_normal((3, 3)), xp)
    state = opt.init(W)
    ones = xp.ones_like(W)
    for t in range(f):
        W, state, _ = opt.step(W, ones + to_backend(np.eye(3) * (t + 1), xp), state)  # gradient 1 + (t+1) I
    # M2 = sum of the f gradients ones + (t+1) I, t = 0 .. f-1: f ones + f(f+1)/2 I, written out
    want = f * ones + to_backend(np.eye(3) * (f * (f + 1) / 2), xp)
    printed = want + ones + to_backend(np.eye(3) * 1.0, xp)  # one more (boundary) gradient, as the print's range counts
    if not max_abs_error(printed, state.slow_momentum, xp) > 0.5:
        raise AssertionError("the slow momentum matches the printed f + 1 term range")
    return max_abs_error(state.slow_momentum, want, xp)


# ------------------------------------------------------------------ preconditioned, delta and deep momentum


def _spd(seed, d, xp):
    g = np.random.default_rng(seed)
    A = g.standard_normal((d, d))
    return to_backend(A @ A.T / d + np.eye(d), xp)


def _trajectory_with(opt, W0, grad, T, P, method="closed"):
    W, state, out = W0, opt.init(W0, P), [W0]
    for t in range(T):
        W, state, _ = opt.step(W, grad(W, t), state, method=method)
        out.append(W)
    return out


@register_check("preconditioned_momentum", f"closed == textbook m = a m - eta P g, W + m, {STEPS} steps",
                16 * STEPS * EPS)
def _precond_textbook(xp):
    W0, grad = _noisy_quadratic(50, (4, 3), STEPS, xp)
    P = _spd(51, 4, xp)
    ours = _trajectory_with(make("preconditioned_momentum", lr=0.05, momentum=0.8), W0, grad, STEPS, P)
    W, m, ref = W0, 0 * W0, [W0]
    for t in range(STEPS):
        m = 0.8 * m - 0.05 * (P @ grad(W, t))
        W = W + m
        ref.append(W)
    return _max_rel(ours, ref, xp)


@register_check("preconditioned_momentum", f"closed == iterative (CG on <m g^T, P> as printed), {STEPS} steps",
                STEPS * 1e-12)
def _precond_iterative(xp):
    W0, grad = _noisy_quadratic(52, (4, 3), STEPS, xp)
    P, opt = _spd(53, 4, xp), make("preconditioned_momentum", lr=0.05, momentum=0.8)
    return _max_rel(_trajectory_with(opt, W0, grad, STEPS, P, "iterative"), _trajectory_with(opt, W0, grad, STEPS, P), xp)


def _register_delta(step):
    # CG's rtol 1e-12 times the implicit level's condition 1 + eta ||g||^2 (< 2 on this problem), per step
    @register_check("delta_momentum", f"{step} step: closed == iterative (CG), {STEPS} steps", STEPS * 2e-12)
    def check(xp):
        W0, grad = _noisy_quadratic(54, (3, 2), STEPS, xp)
        P, opt = _spd(55, 3, xp), make("delta_momentum", lr=0.05, momentum=0.9, step=step)
        return _max_rel(_trajectory_with(opt, W0, grad, STEPS, P, "iterative"),
                        _trajectory_with(opt, W0, grad, STEPS, P), xp)


for _step in ("explicit", "implicit"):
    _register_delta(_step)


@register_check("delta_momentum", "erratum NL-22: consistent step - printed step == (1 - eta) m g^T g + 2 eta P g")
def _nl22(xp):
    from ..optimizers import delta_momentum as dl

    g_np = np.random.default_rng(56)
    m, g = to_backend(g_np.standard_normal((3, 2)), xp), to_backend(g_np.standard_normal((3, 2)), xp)
    P, lr, alpha = _spd(57, 3, xp), 0.1, 0.9
    printed = dl.nl22_printed_step(m, g, P, lr, alpha)
    consistent, _ = dl.momentum_step(m, g, P, lr, alpha, "explicit")
    predicted = (1 - lr) * (m @ xp.matrix_transpose(g) @ g) + 2 * lr * (P @ g)  # derived by hand
    size = max_abs_error(predicted, 0 * predicted, xp)
    if not size > 0.1:
        raise AssertionError("the printed and consistent NL-22 steps coincide on this input")
    return max_abs_error(consistent - printed, predicted, xp), 64 * EPS * size


@register_check("deep_momentum", "hand-written gradient of <m(u), u> == central differences (h = 1e-6)", 1e-8)
def _dmgd_gradient(xp):
    from ..optimizers import deep_momentum as dm

    g_np = np.random.default_rng(58)
    A1, A2, u = (to_backend(g_np.standard_normal(s), xp) for s in ((4, 3), (3, 4), (2, 3)))
    dA1, _ = dm.memory_objective_gradient(A1, A2, u)
    A1n = np.asarray(_to_numpy(A1, xp))
    err, h = 0.0, 1e-6
    for i in np.ndindex(A1n.shape):
        E = np.zeros_like(A1n)
        E[i] = h
        plus = float(dm.memory_objective(to_backend(A1n + E, xp), A2, u))
        minus = float(dm.memory_objective(to_backend(A1n - E, xp), A2, u))
        err = max(err, abs((plus - minus) / (2 * h) - float(_to_numpy(dA1, xp)[i])))
    return err


@register_check("adagrad", "accumulator == G_0 + t * argmin of the plain-sum memory of g^2 (the paper's plain sums)", 1e-12)
def _adagrad_plain_sum(xp):
    g = np.random.default_rng(60)
    grads = [to_backend(g.standard_normal((3, 4)), xp) for _ in range(25)]
    opt = make("adagrad", lr=0.1, initial_accumulator_value=0.2)
    W = to_backend(g.standard_normal((3, 4)), xp)
    state = opt.init(W, keep_history=False)
    for gt in grads:
        W, state, _ = opt.step(W, gt, state)
    mean_sq, _ = mm.plain_sum_argmin(tuple(x * x for x in grads))
    want = 0.2 + 25 * mean_sq
    return rel_error(state.sum, want, xp)


@register_check("deep_momentum", "DMGD, 5 steps == a loop whose memory gradient is central differences (h = 1e-6)")
def _dmgd_loop(xp):
    from ..optimizers import deep_momentum as dm

    W0, grad = _noisy_quadratic(61, (3, 4), 5, xp)
    opt = make("deep_momentum", lr=0.05, momentum=0.9, hidden=3)
    state = opt.init(W0)
    ours = _trajectory(opt, W0, grad, 5, "iterative")
    A = [np.asarray(_to_numpy(state.A1, xp)), np.asarray(_to_numpy(state.A2, xp))]
    W, ref, h = W0, [W0], 1e-6
    for t in range(5):
        u = grad(W, t)
        fd = []
        for which in (0, 1):
            G = np.zeros_like(A[which])
            for i in np.ndindex(G.shape):
                E = np.zeros_like(G)
                E[i] = h
                args = [to_backend(a, xp) for a in A]
                plus, minus = list(args), list(args)
                plus[which], minus[which] = to_backend(A[which] + E, xp), to_backend(A[which] - E, xp)
                G[i] = (float(dm.memory_objective(*plus, u)) - float(dm.memory_objective(*minus, u))) / (2 * h)
            fd.append(G)
        A = [0.9 * A[0] - 0.05 * fd[0], 0.9 * A[1] - 0.05 * fd[1]]
        W = W + dm.read_out(to_backend(A[0], xp), to_backend(A[1], xp), u)
        ref.append(W)
    # central differences are accurate to ~1e-10 (h^2 |f'''| + eps |f| / h); 5 steps of lr 0.05: 1e-8 relative is a ceiling
    return _max_rel(ours, ref, xp), 1e-8
