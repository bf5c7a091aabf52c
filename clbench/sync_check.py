"""No host–device synchronisation in a training step: a check that finds them, and the copy that avoids the usual one.

A GPU runs the work the host queues; the host only waits when it needs a value
the GPU computes. An op that needs one (``.item()``, ``float(t)``, ``if t:``,
``.tolist()``, ``.cpu()``, ``x[mask]``, ``torch.nonzero``, ``torch.unique``, a
blocking ``torch.tensor(values, device=...)``) stalls the host until the GPU has
caught up, so the GPU then idles while the host prepares the next step.

:func:`no_host_sync` is a context manager that finds such ops: on CUDA with
``torch.cuda.set_sync_debug_mode`` (the real thing, restored afterwards), on any
other device with the stand-in of ``clbench.sync_proxy``, which classifies torch
calls by what they would do on a GPU. ``Learner.fit`` runs each training step in
it (from ``loss_fn(batch)`` through backward, clipping, the optimizer and schedule
steps and the loss sum) when the environment variable ``CLBENCH_SYNC_CHECK`` is
``error`` (raise :class:`HostSyncError` at the first one) or ``record`` (collect
them, see :func:`recorded`; each new one also warns once with
:class:`HostSyncWarning`). Building the batch before the step (host labels, the
replay memory on the host) is not checked. A sync a method cannot avoid is
declared where it happens with :func:`allow_host_sync`.

Out of scope: ``GradScaler`` with fp16 (``train.amp: fp16``) reads its inf check
on the host in every step by design; under the check its ``step`` is reported
(bf16, the default on CUDA, needs no scaler).

The check never changes an unchecked run. A checked run on the CPU can differ in
the last bits where a frozen model runs in eval mode inside the step (a teacher's
forward): PyTorch skips its fused attention fast path while a torch function mode
is active.

:func:`to_device` is the copy a step needs for values known on the host (class
ids, positions, dataset ids) without waiting for the GPU.

The module imports torch on first use only, so ``clbench validate`` stays fast.
"""
from __future__ import annotations

import contextlib
import functools
import linecache
import os
import warnings
from dataclasses import dataclass, replace
from typing import Callable, ContextManager, Iterable, Iterator, Optional

import lazy_loader as lazy

from .errors import UserError

torch = lazy.load("torch")

ENV = "CLBENCH_SYNC_CHECK"
MODES = ("error", "record")
CUDA_KIND = "synchronizing CUDA operation"


class HostSyncError(RuntimeError):
    """An op in a checked step would make the host wait for the device (mode ``error``)."""


class HostSyncWarning(UserWarning):
    """A new host sync recorded in a checked step (mode ``record``), shown once per op and place."""


@dataclass(frozen=True)
class Sync:
    """One host sync: ``kind`` (value read, data-dependent shape, device-to-host copy, blocking host-to-device copy,
    or on CUDA "synchronizing CUDA operation"), ``op`` (the torch call, or on CUDA the source line), ``where``
    (``path:line (function)`` of the calling line), ``hint`` (the usual way around it) and ``allowed`` (the
    reason given to :func:`allow_host_sync` around it, empty when it was not allowed)."""

    kind: str
    op: str
    where: str
    hint: str = ""
    allowed: str = ""

    def __str__(self) -> str:
        text = f"{self.kind}: {self.op} at {self.where}"
        return text + (f" (allowed: {self.allowed})" if self.allowed else f"; {self.hint}" if self.hint else "")


_RECORDED: dict[Sync, int] = {}  # every sync recorded in this process -> how many times
_ALLOWED: list[str] = []  # reasons of the allow_host_sync blocks in progress, innermost last
_CUDA_MODES: list[str] = []  # modes of the CUDA checks in progress, innermost last


def recorded() -> dict[Sync, int]:
    """The syncs recorded (mode ``record``) in this process so far, each with how many times it happened."""
    return dict(_RECORDED)


def clear_recorded() -> None:
    """Forget the syncs recorded so far (e.g. between two methods checked in one process)."""
    _RECORDED.clear()


def _record(sync: Sync, found: list[Sync]) -> None:
    found.append(sync)
    first = sync not in _RECORDED
    _RECORDED[sync] = _RECORDED.get(sync, 0) + 1
    if first and not sync.allowed:
        path, _, line = sync.where.partition(":")
        warnings.warn_explicit(f"host sync in a training step: {sync}", HostSyncWarning, path,
                               int(line.split()[0]) if line[:1].isdigit() else 0)


@contextlib.contextmanager
def no_host_sync(device, mode: str = "error", host: Iterable = ()) -> Iterator[list[Sync]]:
    """Check that the block makes the host wait for ``device`` nowhere; yields the list of syncs found (``record``).

    ``device``: the device the block computes on (a ``torch.device`` or name). ``mode``:
    ``"error"`` raises :class:`HostSyncError` at the first sync (on CUDA, from the op itself);
    ``"record"`` lets the block run and collects every sync (also in :func:`recorded`).
    ``host``: tensors that live on the host by design (e.g. ``batch.ids``), which the CPU
    stand-in cannot tell apart from device tensors otherwise; None entries are ignored.
    ValueError for another mode. On CUDA the previous ``torch.cuda`` sync debug mode is
    restored on exit.
    """
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r}; use one of {', '.join(MODES)}")
    device = torch.device(device)
    found: list[Sync] = []
    check = _cuda_check if device.type == "cuda" else _proxy_check
    with check(device, mode, found, [t for t in host if t is not None]):
        yield found


@contextlib.contextmanager
def _proxy_check(device, mode: str, found: list[Sync], host: list) -> Iterator[None]:
    from . import sync_proxy

    placement = sync_proxy.Placement(device)
    placement.mark_host(host)

    def report(finding) -> None:
        sync = Sync(finding.kind, finding.op, sync_proxy.location((__file__,)), finding.hint)
        if _ALLOWED:
            if mode == "record":
                _record(replace(sync, allowed=_ALLOWED[-1]), found)
            return
        if mode == "error":
            raise HostSyncError(f"{sync} (on a GPU this makes the host wait for the device; {ENV}=record lists "
                                f"every such op)")
        _record(sync, found)

    functions = sync_proxy.FunctionCheck(placement, report)
    with functions, sync_proxy.DispatchCheck(functions, report):
        yield


@contextlib.contextmanager
def _cuda_check(device, mode: str, found: list[Sync], host: list) -> Iterator[None]:
    from . import sync_proxy

    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error" if mode == "error" else "warn")
    _CUDA_MODES.append(mode)
    try:
        with warnings.catch_warnings():
            if mode == "record":
                warnings.filterwarnings("always", message=".*synchroniz")
                shown = warnings.showwarning

                def show(message, category, filename, lineno, file=None, line=None):
                    if "synchroniz" not in str(message):
                        return shown(message, category, filename, lineno, file, line)
                    where = sync_proxy.location((__file__, warnings.__file__))
                    _record(Sync(CUDA_KIND, _source(where), where, allowed=_ALLOWED[-1] if _ALLOWED else ""), found)

                warnings.showwarning = show
            yield
    except RuntimeError as exc:
        if "synchroniz" not in str(exc) or isinstance(exc, HostSyncError):
            raise
        where = _traceback_location(exc.__traceback__)
        raise HostSyncError(f"{CUDA_KIND}: {_source(where)} at {where} ({ENV}=record lists every such op)") from exc
    finally:
        _CUDA_MODES.pop()
        torch.cuda.set_sync_debug_mode(previous)


@contextlib.contextmanager
def allow_host_sync(reason: str) -> Iterator[None]:
    """Declare a host sync a method cannot avoid, where it happens: inside the block a check neither raises
    nor warns, and mode ``record`` lists the syncs with ``reason`` (one line: why the step needs the value,
    e.g. "moe dispatch: each expert's image count sizes its batch"). Costs next to nothing without a check.
    """
    _ALLOWED.append(reason)
    silence = bool(_CUDA_MODES) and _CUDA_MODES[-1] == "error"
    if silence:
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("default")
    try:
        yield
    finally:
        _ALLOWED.pop()
        if silence:
            torch.cuda.set_sync_debug_mode(previous)


def _traceback_location(tb) -> str:
    """``path:line (function)`` of the innermost traceback frame outside torch and contextlib."""
    from . import sync_proxy

    where = "?"
    while tb is not None:
        path = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if not (path.startswith(sync_proxy._TORCH_DIR) or path.endswith(os.sep + "contextlib.py")):
            shown = path[len(sync_proxy._ROOT):] if path.startswith(sync_proxy._ROOT) else os.sep.join(path.split(os.sep)[-2:])
            where = f"{shown}:{tb.tb_lineno} ({tb.tb_frame.f_code.co_name})"
        tb = tb.tb_next
    return where


def _source(where: str) -> str:
    """The source line at ``path:line (function)`` (stripped), or "?"."""
    from . import sync_proxy

    path, _, rest = where.partition(":")
    line = rest.split()[0] if rest else ""
    if not line.isdigit():
        return "?"
    full = path if os.path.isabs(path) else os.path.join(sync_proxy._ROOT, path)
    return linecache.getline(full, int(line)).strip() or "?"


def mode_from_env() -> Optional[str]:
    """``CLBENCH_SYNC_CHECK``'s mode: None when unset or empty, else ``error`` or ``record``; UserError otherwise."""
    value = os.environ.get(ENV, "").strip().lower()
    if not value:
        return None
    if value not in MODES:
        raise UserError(f"{ENV}={value!r}: use 'error' (stop at the first host sync in a training step) or "
                        f"'record' (list them), or leave it unset")
    return value


def step_check(device) -> Callable[..., ContextManager]:
    """What ``Learner.fit`` wraps each training step in: ``check(host=(...))`` gives :func:`no_host_sync` on
    ``device`` in the mode ``CLBENCH_SYNC_CHECK`` names, or a context that does nothing when it is unset."""
    mode = mode_from_env()
    if mode is None:
        return lambda host=(): contextlib.nullcontext()
    return functools.partial(no_host_sync, device, mode)


def to_device(values, device, dtype=None) -> "torch.Tensor":
    """``values`` (a list, a number or a host tensor) as a tensor on ``device``, copied without waiting for the device.

    ``torch.tensor(values, device=...)`` and ``tensor.to(device)`` make the host wait until
    the GPU has run everything queued before the copy; this builds the tensor on the host,
    pins it when ``device`` is a CUDA GPU and sends it with ``non_blocking=True``. ``dtype``:
    the tensor's dtype (default: torch's, int64 for a list of ints). The values are the
    same as ``torch.tensor(values, dtype=dtype, device=device)``.
    """
    device = torch.device(device)
    tensor = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
