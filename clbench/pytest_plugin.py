"""pytest fixtures for plugin authors, loaded automatically once clbench is installed.

pytest loads this module in every test session of an environment where clbench
is installed (the ``pytest11`` entry point), so it has no side effects: it
changes no environment variable and imports no torch. ``clbench_run_method``
and ``clbench_check_resume`` set ``HF_HUB_OFFLINE=1`` only while their cells run
(``clbench.testing.hub_offline``).
"""
import pytest

from . import testing


@pytest.fixture
def clbench_run_method():
    """``clbench_run_method(MethodClass, params, train=...)`` -> the record of a tiny run (``clbench.testing.run_method``).

    ``train`` keys are merged over the tiny training settings (``{"epochs": 5}`` keeps the tiny
    ``lr`` and ``batch_size``), as in ``clbench_tiny_suite``.
    """
    return testing.run_method


@pytest.fixture
def clbench_tiny_suite(tmp_path):
    """``clbench_tiny_suite(methods, train=..., **keys)`` -> path of a written tiny suite file (``clbench.testing.tiny_suite``).

    ``train`` keys are merged over the tiny training settings (``{"epochs": 5}`` keeps the tiny
    ``lr`` and ``batch_size``), as in ``clbench_run_method``; other ``keys`` are top-level suite keys.
    """

    def make(methods, **keys):
        return testing.write_suite(tmp_path / "suite.yaml", testing.tiny_suite(methods, **keys))

    return make


@pytest.fixture
def clbench_check_resume():
    """``clbench_check_resume(MethodClass, params, stop_after=0)``: interrupt the method's tiny cell after experience
    ``stop_after``, resume it, and assert its record equals an uninterrupted run's (``clbench.testing.check_resume``;
    the AssertionError names the first differing key). Returns the resumed record."""
    return testing.check_resume
