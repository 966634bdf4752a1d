"""The losses answer extreme and bad inputs with a finite result or a clear error naming the argument."""

import warnings

import numpy as np
import pytest

from refmem.losses import SoftmaxCrossEntropy, SquaredError


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def test_squared_error_of_huge_but_representable_residual():
    y, t = np.array([3e153, 0.0]), np.array([0.0, -4e153])  # ||y - t|| = 5e153: r*r overflows, 1/2 ||r||^2 does not
    assert SquaredError().value(y, t) == pytest.approx(0.5 * 25e306, rel=8 * np.finfo(float).eps)


def test_squared_error_that_cannot_be_represented_raises():
    # 1/2 ||1e200||^2 = 5e399 has no float64; it used to return inf
    with pytest.raises(ValueError, match="too large"):
        SquaredError().value(np.array([1e200, 1.0]), np.array([0.0, 0.0]))


@pytest.mark.parametrize("loss", [SquaredError(), SoftmaxCrossEntropy()])
@pytest.mark.parametrize(("target", "error"), [
    (np.array([np.nan, 1.0]), ValueError),
    (np.array([1, 0]), TypeError),
    (np.array([1 + 0j, 0j]), TypeError),
    (np.array(["a", "b"]), TypeError),
    (np.float64(1.0), TypeError),
    (np.array(1.0), ValueError),
    ([1.0, 0.0], TypeError),
], ids=["nan", "ints", "complex", "strings", "scalar", "0-d", "list"])
def test_curvature_and_third_derivative_validate_the_target(loss, target, error):
    # SoftmaxCrossEntropy().curvature of a nan target returned nan and accepted any input
    with pytest.raises(error, match="target"):
        loss.curvature(target)
    with pytest.raises(error, match="target"):
        loss.third_derivative_bound(target)


def test_cross_entropy_curvature_refuses_negative_weights():
    with pytest.raises(ValueError, match="target"):
        SoftmaxCrossEntropy().curvature(np.array([-1.0, 2.0]))


def test_curvature_values_by_hand():
    t = np.array([[0.2, 0.8], [1.0, 1.0]])
    assert np.array_equal(SoftmaxCrossEntropy().curvature(t), np.array([0.5, 1.0]))  # 1/2 sum p (Gershgorin)
    assert np.array_equal(SquaredError().curvature(t), np.array([1.0, 1.0]))  # Hessian I
