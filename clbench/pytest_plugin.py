"""pytest fixtures for plugin authors, loaded automatically once clbench is installed.

pytest loads this module in every test session of an environment where clbench
is installed (the ``pytest11`` entry point), so it has no side effects: it
changes no environment variable and imports no torch. ``clbench_run_method``
sets ``HF_HUB_OFFLINE=1`` only while its cell runs (``clbench.testing.hub_offline``).
"""
import pytest

from . import testing


@pytest.fixture
def clbench_run_method():
    """``clbench_run_method(MethodClass, params)`` -> the record of a tiny run (``clbench.testing.run_method``)."""
    return testing.run_method


@pytest.fixture
def clbench_tiny_suite(tmp_path):
    """``clbench_tiny_suite(methods, **keys)`` -> path of a written tiny suite file."""

    def make(methods, **keys):
        return testing.write_suite(tmp_path / "suite.yaml", testing.tiny_suite(methods, **keys))

    return make
