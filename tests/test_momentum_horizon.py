"""How many latest gradients carry a given share of the momentum's weight: closed form, any alpha."""

from decimal import Decimal, getcontext

import pytest

from refmem.optimizers import momentum_horizon as mh


def _count_by_decimal(alpha, fraction):
    """Smallest n with 1 - alpha^n >= fraction, in 60-digit decimal arithmetic (independent of floats)."""
    getcontext().prec = 60
    a, f = Decimal(alpha), Decimal(fraction)  # the exact binary values of the floats
    n = int(((1 - f).ln() / a.ln()).to_integral_value(rounding="ROUND_CEILING"))
    while n > 1 and 1 - a ** (n - 1) >= f:
        n -= 1
    while 1 - a ** n < f:
        n += 1
    return n


@pytest.mark.parametrize(("alpha", "fraction"), [(0.999999, 0.5), (0.999999, 0.99), (1 - 1e-12, 0.5),
                                                 (0.9, 0.5), (0.9, 0.99), (0.5, 0.75), (0.0, 0.3)])
def test_count_matches_exact_arithmetic(alpha, fraction):
    # alpha = 0.999999 used to re-sum a growing list of ~700000 weights (it did not finish)
    assert mh.latest_gradients_for_mass(alpha, fraction) == (1 if alpha == 0.0 else _count_by_decimal(alpha, fraction))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5, float("nan"), "0.5", True, None])
def test_fraction_outside_the_open_unit_interval_is_refused(fraction):
    with pytest.raises(ValueError, match="fraction"):
        mh.latest_gradients_for_mass(0.9, fraction)
