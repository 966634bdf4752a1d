r"""In-chunk gate decays and the gradient of a gate through them (the chunked backward passes' gate rule).

A chunk of ``C`` steps with forget gates ``a_1..a_C`` (one per step, or one
per step and channel: the channel is then a leading axis) carries the
products

.. math::

    D_{ts} = \prod_{s < r \le t} a_r \quad (s \le t,\ D_{tt} = 1;\ 0 \text{ above the diagonal}), \qquad
    \gamma_t = \prod_{r \le t} a_r .

They are formed here as products, never as ``exp`` of differences of
cumulative logs, so a zero gate gives exact zeros and the gate gradient below
needs no division by a gate.

Gate rule
---------
Every chunked form uses the gates only through ``D`` and ``gamma``. Given the
gradients ``dD`` and ``dgamma`` of a loss in those products, the gradient in
each gate follows from splitting the product at ``r``: for ``s < r <= t``,
:math:`D_{ts} = D_{tr}\, a_r\, D_{r-1,s}` and :math:`\gamma_t = D_{tr}\, a_r\, \gamma_{r-1}`
(:math:`\gamma_0 = 1`), so

.. math::

    \frac{\partial \mathcal L}{\partial a_r}
    = \sum_{t \ge r > s} dD_{ts}\, D_{tr}\, D_{r-1,s} + \sum_{t \ge r} d\gamma_t\, D_{tr}\, \gamma_{r-1}
    = \big[(D^T dD) \odot D^{\downarrow}\big] \mathbf 1 + (D^T d\gamma) \odot \gamma^{\downarrow},

with :math:`D^{\downarrow}_{rs} = D_{r-1,s}` and :math:`\gamma^{\downarrow}_r = \gamma_{r-1}` (rows
shifted down by one, first row ``0`` and ``1``). The triangular structure of ``D``
restricts the sums to ``t >= r > s`` by itself: entries of ``dD`` on or above the
diagonal (which no gate reaches) drop out.
"""

from __future__ import annotations

from ..linalg import device_of


def chunk_decays(a, xp):
    """``D [..., C, C]`` and ``gamma [..., C]`` of gates ``a [..., C]`` (module docstring).

    Parameters
    ----------
    a : array ``[..., C]``
        Gates of one chunk along the last axis (a channel axis, if any, is a leading axis).

    Returns
    -------
    D : array ``[..., C, C]``
        ``D[t, s] = prod_{s < r <= t} a_r`` on and below the diagonal, 0 above.
    gamma : array ``[..., C]``
        ``gamma[t] = prod_{r <= t} a_r``.
    """
    C = a.shape[-1]
    i = xp.arange(C, device=device_of(a))
    t, s = i[:, None], i[None, :]  # (C, 1), (1, C)
    ones = xp.ones(tuple(a.shape[:-1]) + (C, C), dtype=a.dtype, device=device_of(a))  # (.., C, C)
    D = xp.where(t >= s, ones, 0 * ones)  # (.., C, C): empty products on and below the diagonal
    gamma = xp.ones_like(a)  # (.., C)
    for r in range(C):
        a_r = a[..., r:r + 1]  # (.., 1)
        D = D * xp.where((s < r) & (r <= t), a_r[..., None], ones)  # (.., C, C): factor a_r where s < r <= t
        gamma = gamma * xp.where(i >= r, a_r, xp.ones_like(gamma))  # (.., C): factor a_r where r <= t
    return D, gamma


def gate_gradient(dD, dgamma, D, gamma, xp):
    r"""``dL/da [..., C]`` from ``dL/dD [..., C, C]`` and ``dL/dgamma [..., C]`` (module docstring, gate rule).

    Notes
    -----
    .. math::

        da = \big[(D^T dD) \odot D^{\downarrow}\big]\mathbf 1 + (D^T d\gamma) \odot \gamma^{\downarrow}.
    """
    C = D.shape[-1]
    zero_row = xp.zeros_like(D[..., :1, :])  # (.., 1, C)
    D_down = xp.concat([zero_row, D[..., :C - 1, :]], axis=-2)  # (.., C, C): row r holds D[r-1, :]
    gamma_down = xp.concat([xp.ones_like(gamma[..., :1]), gamma[..., :C - 1]], axis=-1)  # (.., C): gamma[r-1]
    DT = xp.matrix_transpose(D)  # (.., C, C)
    through_D = xp.sum((DT @ dD) * D_down, axis=-1)  # (.., C, C) @ (.., C, C) -> (.., C)
    through_gamma = (DT @ dgamma[..., None])[..., 0] * gamma_down  # (.., C, C) @ (.., C, 1) -> (.., C)
    return through_D + through_gamma
