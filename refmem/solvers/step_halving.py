r"""The step search of the backtracking solvers: halve each problem's step until its descent test holds.

:func:`~refmem.solvers.backtracking_proximal_gradient` (Euclidean steps) and
:func:`~refmem.solvers.mirror_descent` (entropy steps on a simplex) keep one step
``t`` per batch element, need no global Lipschitz bound, and differ only in how a
trial point is made and how far it is from the current one. The search they share,
the descent test and its rounding allowance are written here once.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from ..linalg import fro_norm, inner
from ..validation import expand_matrix


class AcceptedStep(NamedTuple):
    r"""The outcome of :func:`halve_until_accepted`: one accepted trial per problem.

    Attributes
    ----------
    X : array ``[..., a, b]``
        The accepted trial points :math:`X^+`.
    G : array ``[..., a, b]``
        Their gradients :math:`\nabla f(X^+)`.
    f : array ``[...]`` or None
        Their values :math:`f(X^+)` when the value form of the test was used, else None.
    t : array ``[...]``
        The accepted steps.
    may_grow : array ``[...]`` of bool
        The first trial was accepted and its test was above rounding: the step may grow.
    """

    X: object
    G: object
    f: object
    t: object
    may_grow: object


def halve_until_accepted(X, G, t, xp, *, propose: Callable, grad: Callable, divergence: Callable,
                         max_halvings: int, value: Callable | None = None, fX=None) -> AcceptedStep | None:
    r"""Per problem, halve the step ``t`` until the trial point ``propose(t)`` passes the descent test.

    Parameters
    ----------
    X, G : array ``[..., a, b]``
        Current points and their gradients :math:`\nabla f(X)`.
    t : array ``[...]``
        The first step tried, one per problem.
    propose : callable
        ``propose(t) -> X+`` ``[..., a, b]``: the trial points for steps ``t [...]``.
    grad : callable
        ``grad(X+) -> [..., a, b]``, the gradient of the smooth part ``f``.
    divergence : callable
        ``divergence(X+, D, t) -> [...]``, with ``D = X+ - X``: the distance term the
        step allows, :math:`\|D\|^2/(2t)` for Euclidean steps, :math:`\mathrm{KL}(X^+\|X)/t`
        for entropy steps.
    max_halvings : int
        Trials at the most.
    value, fX : callable and array ``[...]``, optional
        ``value(X+)`` (``f``) and ``fX = f(X)``: the test on values is accepted too.

    Returns
    -------
    AcceptedStep or None
        None when some problem has failed ``max_halvings`` trials (the caller raises,
        naming its solver).

    Notes
    -----
    With :math:`D = X^+ - X` and :math:`B` the divergence term, a trial is accepted when

    .. math::

        \langle \nabla f(X^+) - \nabla f(X), D\rangle \le B + 8\,\varepsilon\,
        (\|\nabla f(X)\| + \|\nabla f(X^+)\|)\,\|D\|
        \quad\text{or (with value)}\quad f(X^+) \le f(X) + \langle\nabla f(X), D\rangle + B .

    For convex ``f``, :math:`f(X^+) - f(X) - \langle\nabla f(X), D\rangle \le
    \langle\nabla f(X^+) - \nabla f(X), D\rangle`, so the gradient form implies the
    descent condition on values (the descent lemma, or relative smoothness for the
    entropy), and unlike the test on values it does not drown in the rounding of
    ``f`` near the minimiser.

    The allowance is the rounding of the computed left side. The subtraction
    :math:`G^+ - G` errs by at most :math:`\varepsilon(|G^+_i| + |G_i|)` per entry and the
    sum of products by a few :math:`\varepsilon` relative to
    :math:`\sum_i (|G^+_i| + |G_i|)|D_i|` (pairwise summation: at most
    :math:`\lceil\log_2 n\rceil\varepsilon` for ``n`` entries, in practice far less), which
    Cauchy-Schwarz bounds by :math:`(\|G\| + \|G^+\|)\|D\|`; ``8`` is that "few". It does
    not cover the rounding inside the gradients themselves. Where the allowance is
    comparable to :math:`B` the test cannot see a too long step, so a step accepted
    there must not grow: ``may_grow`` requires acceptance at the first trial with
    :math:`B > 10^3` times the allowance.
    """
    eps = float(xp.finfo(X.dtype).eps)
    X_new = propose(t)  # (.., a, b)
    may_grow = None
    # invariant: X_new = propose(t) for every problem; where the test has held, t and X_new stay as they are
    for _ in range(max_halvings):
        D = X_new - X  # (.., a, b)
        G_new = grad(X_new)  # (.., a, b)
        f_new = None if value is None else value(X_new)  # (..,)
        B = divergence(X_new, D, t)  # (..,)
        allowance = 8 * eps * (fro_norm(G, xp) + fro_norm(G_new, xp)) * fro_norm(D, xp)  # (..,) rounding (Notes)
        ok = inner(G_new - G, D, xp) <= B + allowance  # (..,); nan/inf (an overflowing trial) compare False
        if value is not None:
            ok = (f_new <= fX + inner(G, D, xp) + B) | ok
        if may_grow is None:
            may_grow = ok & (B > 1e3 * allowance)
        if bool(xp.all(ok)):
            return AcceptedStep(X_new, G_new, f_new, t, may_grow)
        t = xp.where(ok, t, 0.5 * t)  # (..,)
        X_new = xp.where(expand_matrix(ok, xp), X_new, propose(t))  # (.., a, b)
    return None
