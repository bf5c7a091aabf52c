"""pytest fixtures for plugin authors, loaded automatically once clbench is installed."""
import pytest

from . import testing


@pytest.fixture
def clbench_run_method():
    """``clbench_run_method(MethodClass, params)`` -> the record of a tiny run."""
    return testing.run_method


@pytest.fixture
def clbench_tiny_suite(tmp_path):
    """``clbench_tiny_suite(methods, **keys)`` -> path of a written tiny suite file."""

    def make(methods, **keys):
        return testing.write_suite(tmp_path / "suite.yaml", testing.tiny_suite(methods, **keys))

    return make
