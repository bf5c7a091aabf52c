import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a failed download would retry for ~50 s
os.environ.pop("CLBENCH_DISABLE_PLUGIN_AUTOLOAD", None)
os.environ.pop("CLBENCH_TRACE_PLUGINS", None)

import pytest  # noqa: E402

from clbench.plugins import Plugins, make_plugin_manager  # noqa: E402


@pytest.fixture
def plugins():
    """A fresh plugin manager, so a test's plugins never leak into another's."""
    return Plugins(make_plugin_manager())
