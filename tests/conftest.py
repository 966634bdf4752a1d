"""Shared test configuration: hypothesis profiles and the backends every core test runs on."""

import os

import pytest
from hypothesis import HealthCheck, settings

# `ci`: deterministic, no deadline (a 2-core CI machine is slow and noisy); used by `make test`.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# `dev`: random, more examples, for hunting bugs locally: HYPOTHESIS_PROFILE=dev pytest
settings.register_profile("dev", deadline=None, max_examples=200,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CPU_BACKENDS = ["numpy", "array_api_strict"]

# How many bad-input calls the guard (tests/test_bad_input.py) made in this session, by family; printed in
# the terminal summary (the figure the guard reports).
BAD_INPUT_CALLS: dict = {}


def pytest_terminal_summary(terminalreporter):
    if BAD_INPUT_CALLS:
        parts = ", ".join(f"{family} {n}" for family, n in sorted(BAD_INPUT_CALLS.items()))
        terminalreporter.write_line(f"bad-input calls made: {sum(BAD_INPUT_CALLS.values())} ({parts})")


@pytest.fixture(params=CPU_BACKENDS)
def xp(request):
    """The namespace of each CPU backend; the strict one stands in for a foreign backend (CuPy)."""
    import refmem

    with refmem.backend(request.param) as ns:
        yield ns


def to_numpy(a):
    """A backend array as a NumPy array (for comparisons in tests)."""
    import numpy as np

    return np.asarray(a) if not hasattr(a, "__dlpack__") or type(a).__module__.startswith("numpy") else np.from_dlpack(a)


def files_by_path(d):
    """``{path relative to d: bytes}`` for every file below ``d``: two folders are byte-identical when these are equal."""
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            with open(os.path.join(root, n), "rb") as fh:
                out[os.path.relpath(os.path.join(root, n), d)] = fh.read()
    return out
