import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # a failed download would retry for ~50 s
os.environ.pop("CLBENCH_DISABLE_PLUGIN_AUTOLOAD", None)
os.environ.pop("CLBENCH_TRACE_PLUGINS", None)
# decoded images and shared results go to a folder of this test session, never the user's ~/.cache
os.environ["CLBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="clbench-test-cache-")

import pytest  # noqa: E402

from clbench.plugins import Plugins, make_plugin_manager  # noqa: E402


@pytest.fixture
def plugins():
    """A fresh plugin manager, so a test's plugins never leak into another's."""
    return Plugins(make_plugin_manager())
