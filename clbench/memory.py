"""Counting the memory a method keeps beyond the model it trains (``Method.memory_summary``).

The seed paper and "A model or 603 exemplars" (Zhou et al., ICLR 2023) compare methods at
equal total memory: exemplars plus whatever else a method stores (teacher models, Fisher
information, stored scores, prototypes, adapters). Records hold these bytes by kind.
"""
from __future__ import annotations

from typing import Any

#: the kinds the built-in methods report; a method may add its own names
KINDS = ("replay_images", "stored_outputs", "frozen_models", "parameter_anchors", "prototypes", "adapters")


def nbytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj`` (a tensor, a module's parameters and buffers, or nested dict/list/tuple).

    Each distinct storage is counted once, so views and shared tensors are not double counted.
    Other values count 0.
    """
    import torch

    seen: set[tuple[int, int]] = set()
    total = 0

    def visit(x: Any) -> None:
        nonlocal total
        if isinstance(x, torch.Tensor):
            key = (x.untyped_storage().data_ptr(), x.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                total += x.untyped_storage().nbytes()
        elif isinstance(x, torch.nn.Module):
            for t in x.state_dict(keep_vars=True).values():
                visit(t)
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)

    visit(obj)
    return total


def memory_record(summary: dict[str, int]) -> dict[str, Any]:
    """The record's ``memory``: ``{"bytes": {kind: bytes}, "total_bytes": sum}``; ValueError for a negative or non-int value."""
    for kind, value in summary.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"memory_summary: '{kind}' must be a non-negative int of bytes, got {value!r}")
    return {"bytes": dict(sorted(summary.items())), "total_bytes": sum(summary.values())}
