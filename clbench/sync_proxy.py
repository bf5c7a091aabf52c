"""The CPU stand-in for ``torch.cuda.set_sync_debug_mode``: which torch calls would make the host wait on a GPU.

Used by :func:`clbench.sync_check.no_host_sync` on a device other than CUDA. Two
torch modes watch the calls made while it is active:

- a ``TorchFunctionMode`` sees every call as written in Python (``x.item()``,
  ``x[mask]``, ``x.to(device)``, ``torch.tensor(values, device=...)``) with its
  arguments, and classifies it by what the call does on a GPU (``Classifier``);
  it is the only one of the two that sees ``Tensor.tolist``, ``numpy``, ``cpu``,
  ``to`` and printing, which never reach the dispatcher on a CPU;
- a ``TorchDispatchMode`` catches the syncing ATen operators (``_local_scalar_dense``,
  ``nonzero``, the ``unique`` family, ``masked_select``, ...) reached through a call
  the first one did not flag, e.g. a library function built on them.

On a CPU every tensor is on the host, so where a tensor would live on a GPU is
inferred: tensors made inside the checked code by a factory without ``device``
(``torch.randperm(n, generator=g)``, ``torch.tensor(list)``), anything computed
from such tensors alone, and tensors declared with ``host=`` are host tensors;
every other tensor (model weights, the batch, a method's state) is taken to be on
the device. So on a CPU a host tensor made before the checked code (say, an index
drawn when the batch was built) is taken for a device tensor: reading it is
reported unless it is declared, and a blocking ``.to(device)`` of it is missed
(CUDA's own check sees it). On another device (MPS, XPU) a tensor's own device
decides exactly.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

VALUE_READ = "value read"
DYNAMIC_SHAPE = "data-dependent shape"
TO_HOST = "device-to-host copy"
TO_DEVICE = "blocking host-to-device copy"

#: tensors known to live on the host, shared by every check in the process (entries die with their tensors)
_HOST = WeakIdKeyDictionary()

_T = torch.Tensor
_F = torch.nn.functional
#: calls that read tensor values into Python, with how to avoid them
VALUE_READS = {
    _T.item: "keep the value a tensor (0-dim) and read it once after the experience",
    _T.tolist: "keep it a tensor, or use a host list (batch.classes)",
    _T.numpy: "keep it a tensor",
    _T.__bool__: "use torch.where / masked_fill instead of a Python branch on a tensor",
    _T.__int__: "keep it a tensor",
    _T.__float__: "keep it a tensor",
    _T.__index__: "index with the tensor itself (or keep the count on the host)",
    _T.__complex__: "keep it a tensor",
    _T.__array__: "keep it a tensor",
    _T.__repr__: "do not print tensors in a step",
    _T.__format__: "do not format tensors in a step",
    _T.__contains__: "compare with == and keep the result a tensor",
    _T.is_nonzero: "keep the result a tensor",
    torch.is_nonzero: "keep the result a tensor",
    _T.equal: "compare with == and keep the result a tensor",
    torch.equal: "compare with == and keep the result a tensor",
    _T.allclose: "use torch.isclose and keep the result a tensor",
    torch.allclose: "use torch.isclose and keep the result a tensor",
}
#: calls whose output size depends on tensor values, so the host must read them first
DYNAMIC_SHAPES = {
    _T.nonzero: "use torch.where(cond, a, b) or a mask kept as a tensor",
    torch.nonzero: "use torch.where(cond, a, b) or a mask kept as a tensor",
    _T.argwhere: "use torch.where(cond, a, b) or a mask kept as a tensor",
    torch.argwhere: "use torch.where(cond, a, b) or a mask kept as a tensor",
    _T.unique: "use batch.classes (a host list) or a comparison against the known classes",
    torch.unique: "use batch.classes (a host list) or a comparison against the known classes",
    torch.unique_consecutive: "use a comparison against the known values",
    _T.unique_consecutive: "use a comparison against the known values",
    torch.masked_select: "use torch.where(mask, x, 0) and reduce",
    _T.masked_select: "use torch.where(mask, x, 0) and reduce",
    torch.bincount: "use torch.zeros(n).scatter_add_(0, index, ones) (bincount reads the largest value)",
    _T.bincount: "use torch.zeros(n).scatter_add_(0, index, ones) (bincount reads the largest value)",
}
MASK_HINT = "index with integer positions or use torch.where / masked_fill instead of a boolean mask"


@dataclass(frozen=True)
class Finding:
    """One call that would synchronise: ``kind`` (VALUE_READ, ...), ``op`` (the torch call), ``hint`` (the usual fix)."""

    kind: str
    op: str
    hint: str


def op_name(func) -> str:
    """A short readable name of a torch callable: ``Tensor.item``, ``torch.nonzero``, ``aten.nonzero``."""
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or str(func)
    for prefix, short in (("TensorBase.", "Tensor."), ("_VariableFunctionsClass.", "torch."), ("_TensorBase.", "Tensor.")):
        if qual.startswith(prefix):
            return short + qual[len(prefix):]
    if isinstance(func, torch._ops.OpOverload):
        return str(func.overloadpacket)  # aten.nonzero
    if qual == "fn" or qual.endswith("<locals>.fn"):  # torch.unique and friends are boolean_dispatch wrappers
        return "torch." + getattr(func, "__name__", qual)
    return f"F.{qual}" if getattr(_F, qual, None) is func else qual


def tensors_in(tree) -> list[torch.Tensor]:
    """Every tensor in a nested structure of arguments (lists, tuples, dicts)."""
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


class Placement:
    """Where a tensor would live on a GPU: exactly on a non-CPU device, by inference on the CPU (module docstring)."""

    def __init__(self, device: torch.device):
        self.inferred = device.type == "cpu"

    def is_host(self, t: torch.Tensor) -> bool:
        if not self.inferred:
            return t.device.type == "cpu"
        return t in _HOST

    def mark_host(self, tensors) -> None:
        if self.inferred:
            for t in tensors:
                _HOST[t] = True

    def target_is_host(self, target) -> bool:
        """Whether a ``to``/factory ``device`` argument means the host. On the CPU, a string "cpu" does and a
        ``torch.device`` (what code passes for the learner's device) does not; elsewhere the device type decides."""
        if isinstance(target, torch.Tensor):
            return self.is_host(target)
        if self.inferred:
            return isinstance(target, str) and target.startswith("cpu")
        return torch.device(target).type == "cpu"


def _bool_index(index) -> bool:
    return any(t.dtype in (torch.bool, torch.uint8) for t in tensors_in(index))


def _to_target(args, kwargs):
    """(device target or None, non_blocking) of ``Tensor.to(*args, **kwargs)`` (args without self)."""
    target, non_blocking = kwargs.get("device"), kwargs.get("non_blocking", False)
    if args:
        first = args[0]
        if isinstance(first, (str, torch.device, int, torch.Tensor)) and not isinstance(first, bool):
            target = first
            rest = args[2:] if not isinstance(first, torch.Tensor) else args[1:]
        else:  # to(dtype, non_blocking, copy)
            rest = args[1:]
        if rest:
            non_blocking = rest[0]
    return target, bool(non_blocking)


class Classifier:
    """What a torch call would do on a GPU: a :class:`Finding` when it would make the host wait, else None."""

    def __init__(self, placement: Placement):
        self.placement = placement

    def any_device(self, tensors) -> bool:
        return any(not self.placement.is_host(t) for t in tensors)

    def classify(self, func, args, kwargs) -> Optional[Finding]:
        tensors = tensors_in((args, kwargs))
        name = op_name(func)
        if func in VALUE_READS and self.any_device(tensors):
            return Finding(VALUE_READ, name, VALUE_READS[func])
        if func in DYNAMIC_SHAPES and self.any_device(tensors):
            return Finding(DYNAMIC_SHAPE, name, DYNAMIC_SHAPES[func])
        special = _SPECIAL.get(func)
        return special(self, name, args, kwargs, tensors) if special else None

    # --- calls whose arguments decide ------------------------------------------------------
    def _where(self, name, args, kwargs, tensors):
        if len(args) + len(kwargs) == 1 and self.any_device(tensors):
            return Finding(DYNAMIC_SHAPE, name + "(condition)", "give torch.where its two value arguments")
        return None

    def _mask_index(self, name, args, kwargs, tensors):
        index = args[1] if len(args) > 1 else kwargs.get("indices", kwargs.get("key"))
        if _bool_index(index) and self.any_device(tensors):
            return Finding(DYNAMIC_SHAPE, name + " with a boolean mask", MASK_HINT)
        return None

    def _repeat_interleave(self, name, args, kwargs, tensors):
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        one_arg = len(args) == 1 and "repeats" not in kwargs and name.startswith("torch.")
        if (one_arg or isinstance(repeats, torch.Tensor)) and kwargs.get("output_size") is None and self.any_device(tensors):
            return Finding(DYNAMIC_SHAPE, name + " without output_size", "pass output_size (known on the host)")
        return None

    def _one_hot(self, name, args, kwargs, tensors):
        classes = args[1] if len(args) > 1 else kwargs.get("num_classes", -1)
        if classes < 0 and self.any_device(tensors):
            return Finding(DYNAMIC_SHAPE, name + " without num_classes", "pass num_classes")
        return None

    def _to(self, name, args, kwargs, tensors):
        target, non_blocking = _to_target(args[1:], kwargs)
        return self._transfer(name, args[0], target, non_blocking)

    def _cpu(self, name, args, kwargs, tensors):
        return self._transfer(name, args[0], "cpu", False)

    def _cuda(self, name, args, kwargs, tensors):
        non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
        return self._transfer(name, args[0], torch.device("cuda"), bool(non_blocking))

    def _copy(self, name, args, kwargs, tensors):
        dst, src = args[0], args[1] if len(args) > 1 else kwargs["src"]
        non_blocking = bool(kwargs.get("non_blocking", args[2] if len(args) > 2 else False))
        dst_host, src_host = self.placement.is_host(dst), self.placement.is_host(src)
        if src_host == dst_host:
            return None
        if dst_host:
            return Finding(TO_HOST, name, "keep the result on the device")
        return None if non_blocking else Finding(TO_DEVICE, name, "pass non_blocking=True")

    def _transfer(self, name, tensor, target, non_blocking):
        if target is None:
            return None  # a dtype or memory-format change
        source_host, target_host = self.placement.is_host(tensor), self.placement.target_is_host(target)
        if not source_host and target_host:
            return Finding(TO_HOST, name + "(host)", "keep it on the device; read device values once after the experience")
        if source_host and not target_host and not non_blocking:
            return Finding(TO_DEVICE, name + "(device)", "pass non_blocking=True (clbench.to_device does)")
        return None

    def _from_data(self, name, args, kwargs, tensors):
        data = args[0] if args else kwargs.get("data")
        if isinstance(data, (list, tuple)) and self.any_device(tensors_in(data)):
            return Finding(VALUE_READ, name + " of device tensors", "use torch.stack")
        device = kwargs.get("device")
        if isinstance(data, torch.Tensor) and self.placement.is_host(data):
            return self._transfer(name, data, device, False)
        if not isinstance(data, torch.Tensor) and device is not None and not self.placement.target_is_host(device):
            return Finding(TO_DEVICE, name + "(values, device=...)", "build it on the host and copy it with "
                                                                       "clbench.to_device(values, device)")
        return None

    def _new_tensor(self, name, args, kwargs, tensors):
        owner, data = args[0], args[1] if len(args) > 1 else kwargs.get("data")
        device = kwargs.get("device")
        on_device = not self.placement.is_host(owner) if device is None else not self.placement.target_is_host(device)
        if on_device and not isinstance(data, torch.Tensor):
            return Finding(TO_DEVICE, name + "(values)", "build it on the host and copy it with clbench.to_device(values, device)")
        return None

    def _histc(self, name, args, kwargs, tensors):
        low = args[2] if len(args) > 2 else kwargs.get("min", 0)
        high = args[3] if len(args) > 3 else kwargs.get("max", 0)
        if low == high and self.any_device(tensors):
            return Finding(DYNAMIC_SHAPE, name + " without a range", "pass min and max")
        return None


_SPECIAL: dict = {
    torch.where: Classifier._where,
    _T.__getitem__: Classifier._mask_index, _T.__setitem__: Classifier._mask_index,
    _T.index_put_: Classifier._mask_index, _T.index_put: Classifier._mask_index, torch.index_put: Classifier._mask_index,
    torch.repeat_interleave: Classifier._repeat_interleave, _T.repeat_interleave: Classifier._repeat_interleave,
    _F.one_hot: Classifier._one_hot,
    _T.to: Classifier._to, _T.cpu: Classifier._cpu, _T.cuda: Classifier._cuda, _T.copy_: Classifier._copy,
    torch.tensor: Classifier._from_data, torch.as_tensor: Classifier._from_data, torch.asarray: Classifier._from_data,
    _T.new_tensor: Classifier._new_tensor,
    torch.histc: Classifier._histc, _T.histc: Classifier._histc,
}
#: calls that may move a tensor: their result is host or device by where they send it, not by their inputs
_MOVES = (_T.to, _T.cpu, _T.cuda, torch.as_tensor, torch.asarray, torch.tensor)

#: ATen operators that synchronise on a GPU whatever their arguments
_SYNCING_ATEN = {"aten::_local_scalar_dense": VALUE_READ, "aten::equal": VALUE_READ, "aten::is_nonzero": VALUE_READ,
                 "aten::allclose": VALUE_READ, "aten::nonzero": DYNAMIC_SHAPE, "aten::_unique": DYNAMIC_SHAPE,
                 "aten::_unique2": DYNAMIC_SHAPE, "aten::unique_dim": DYNAMIC_SHAPE,
                 "aten::unique_consecutive": DYNAMIC_SHAPE, "aten::unique_dim_consecutive": DYNAMIC_SHAPE,
                 "aten::masked_select": DYNAMIC_SHAPE, "aten::bincount": DYNAMIC_SHAPE}
#: calls sync-free on a GPU whose CPU kernels read values (e.g. one_hot checks its labels' range on the CPU only)
_CPU_ONLY_READS = (_F.one_hot,)


def _aten_finding(func, args, kwargs) -> Optional[Finding]:
    name = func._schema.name
    kind = _SYNCING_ATEN.get(name)
    if kind is None and name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices")
        kind = DYNAMIC_SHAPE if _bool_index(indices) else None
    if name == "aten::repeat_interleave" and func._overloadname != "self_int" and kwargs.get("output_size") is None:
        kind = DYNAMIC_SHAPE  # repeats given as a tensor
    hint = "a torch call reached it: " + ("keep values tensors" if kind == VALUE_READ else "avoid value-sized outputs")
    return Finding(kind, str(func.overloadpacket), hint) if kind else None


Report = Callable[[Finding], None]


class FunctionCheck(TorchFunctionMode):
    """Classifies every torch call, reports findings, and tracks which tensors are on the host (see the module)."""

    def __init__(self, placement: Placement, report: Report):
        super().__init__()
        self.placement, self.report = placement, report
        self.classifier = Classifier(placement)
        self.calls: list[bool] = []  # per call in progress, innermost last: already handled? (read by DispatchCheck)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        finding = self.classifier.classify(func, args, kwargs)
        if finding is not None:
            self.report(finding)
        inputs = tensors_in((args, kwargs))
        handled = finding is not None or func in _CPU_ONLY_READS or (inputs and not self.classifier.any_device(inputs))
        self.calls.append(handled)
        try:
            out = func(*args, **kwargs)
        finally:
            self.calls.pop()
        return self._place(func, args, kwargs, inputs, out)

    def _place(self, func, args, kwargs, inputs, out):
        """Mark the call's new tensors as host tensors when they are; a moved tensor gets its own object."""
        if not self.placement.inferred:
            return out
        if func in _MOVES:
            to_host = self._moves_to_host(func, args, kwargs, inputs)
            if to_host is not None:
                if isinstance(out, torch.Tensor) and any(out is t for t in inputs) and to_host != self.placement.is_host(out):
                    out = out.view_as(out)  # a CPU "copy" returns its input: keep the source's placement apart
                if to_host and isinstance(out, torch.Tensor):
                    self.placement.mark_host([out])
                return out
        if inputs:
            host = not self.classifier.any_device(inputs)
        else:  # a factory: on the host unless given a device
            host = kwargs.get("device") is None or self.placement.target_is_host(kwargs["device"])
        if host:
            self.placement.mark_host(tensors_in(out))
        return out

    def _moves_to_host(self, func, args, kwargs, inputs) -> Optional[bool]:
        """Where a moving call sends its result: True host, False device, None it does not move (e.g. a dtype change)."""
        if func is _T.cpu:
            return True
        if func is _T.cuda:
            return False
        if func is _T.to:
            target, _ = _to_target(args[1:], kwargs)
        else:
            target = kwargs.get("device")
        if target is None:
            return None if inputs else True  # torch.tensor(values): a new host tensor
        return self.placement.target_is_host(target)


class DispatchCheck(TorchDispatchMode):
    """Reports syncing ATen operators reached through a torch call the function check did not already handle."""

    def __init__(self, functions: FunctionCheck, report: Report):
        super().__init__()
        self.functions, self.report = functions, report

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        calls = self.functions.calls
        if not (calls and calls[-1]):
            finding = _aten_finding(func, args, kwargs)
            if finding is not None:
                self.report(finding)
        return func(*args, **kwargs)


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # clbench's repository


def location(skip: tuple[str, ...] = ()) -> str:
    """``path:line (function)`` of the innermost calling frame outside torch, contextlib, this module and the
    ``skip`` files: the line that made the call. Paths in clbench's repository are relative to it
    (``methods/derpp.py:151 (add)``), others keep their last two parts."""
    ignored = {os.path.abspath(__file__), *map(os.path.abspath, skip)}
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not (path.startswith(_TORCH_DIR) or path in ignored or path.endswith(os.sep + "contextlib.py")):
            shown = path[len(_ROOT):] if path.startswith(_ROOT) else os.sep.join(path.split(os.sep)[-2:])
            return f"{shown}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "?"
