"""clbench: benchmark continual-learning methods for CLIP models.

Plugin authors need only this namespace::

    from clbench import Method, Params, hookimpl
"""
import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("clbench")

from .method import Method, Params  # noqa: E402

__all__ = ["Method", "Params", "hookimpl", "__version__"]
