"""What a checkpoint may hold: the values ``torch.load(weights_only=True)`` reads back.

Checkpoints are read with ``weights_only=True`` (no code runs while loading), so a
method's ``state_dict()`` must hold only values that unpickler admits. A state that
holds anything else would save fine and then fail to load on resume, so the runner
checks each state before saving it (``check_method_state``) and refuses it with one
line naming the method, the key and the type.

The walker admits a subset of what torch admits (torch 2.x, default allow-list, no
``torch.serialization.add_safe_globals``): the exact types below, never subclasses
(an ``IntEnum`` or a namedtuple pickles as its own class, which torch refuses).
tests/test_plugin_state.py round-trips every admitted kind through torch and checks
that torch refuses a sample of the refused ones.
"""
from __future__ import annotations

import lazy_loader as lazy

from .errors import UserError

torch = lazy.load("torch")

ALLOWED = "tensors, numbers, strings, bools, None and lists/tuples/dicts of them (torch.load weights_only)"

_SCALARS = (type(None), bool, int, float, complex, str, bytes, bytearray)


def _leaf_types() -> tuple[type, ...]:
    return _SCALARS + (torch.Size, torch.dtype, torch.device, torch.layout, torch.qscheme)


def _container_types() -> tuple[type, ...]:
    import collections

    return (list, tuple, dict, set, collections.OrderedDict, collections.Counter)


def first_unloadable(value, path: str = "state_dict()") -> tuple[str, object] | None:
    """The first part of ``value`` that ``torch.load(weights_only=True)`` would refuse, as ``(path, part)``, or None.

    ``path`` names ``value``; a part's path extends it the way Python indexes it
    (``state_dict()['teacher'][0]``), ``the key … of …`` / ``an element of …`` for dict keys
    and set elements, ``….name`` for an attribute set on a tensor. Tensors are leaves
    (their data is not read); shared and cyclic references are walked once.
    """
    leaves, containers = _leaf_types(), _container_types()
    seen: set[int] = set()
    stack = [(path, value)]
    while stack:
        where, part = stack.pop()
        kind = type(part)
        if kind in leaves:
            continue
        if kind in (torch.Tensor, torch.nn.Parameter):
            extra = getattr(part, "__dict__", None)  # attributes set on a tensor are pickled with it
            if extra and id(part) not in seen:
                seen.add(id(part))
                stack.extend((f"{where}.{name}", v) for name, v in reversed(list(extra.items())))
            continue
        if kind not in containers:
            return where, part
        if id(part) in seen:
            continue
        seen.add(id(part))
        children = []
        if isinstance(part, dict):
            for key, item in part.items():
                children.append((f"the key {_short_repr(key)} of {where}", key))
                children.append((f"{where}[{_short_repr(key)}]", item))
        elif isinstance(part, set):
            children = [(f"an element of {where}", item) for item in part]
        else:
            children = [(f"{where}[{i}]", item) for i, item in enumerate(part)]
        stack.extend(reversed(children))  # depth first, in order: the first offender is the one a reader meets first
    return None


def _short_repr(key) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def type_name(value) -> str:
    """``value``'s type for a message: ``int``, ``numpy.ndarray``, ``my_plugin.Teacher``."""
    kind = type(value)
    name = kind.__qualname__.split("<locals>.")[-1]
    return name if kind.__module__ == "builtins" else f"{kind.__module__}.{name}"


def _hint(value) -> str:
    kind = type(value)
    if kind.__module__.startswith("numpy"):
        return "convert it with torch.from_numpy, or .item() for a number"
    for base in _container_types() + _SCALARS:
        if isinstance(value, base):  # a subclass: an enum, a namedtuple, a dict subclass
            return f"store it as a plain {base.__name__}"
    return "save its tensors and rebuild the object in load_state_dict"


def check_method_state(method: str, state) -> None:
    """Refuse a method state that a checkpoint could not bring back.

    Args:
        method: the method's name, for the message.
        state: what the method's ``state_dict()`` returned.

    Raises:
        UserError: one line naming the method, the first offending key path, its type and
            the types allowed, e.g. ``method 'lwf_plugin': state_dict()['teacher'] is a
            my_plugin.Teacher; checkpoints hold only tensors, …: save its tensors and
            rebuild the object in load_state_dict``.
    """
    found = first_unloadable(state)
    if found is None:
        return
    where, part = found
    name = type_name(part)
    article = "an" if name[:1].lower() in "aeiou" else "a"
    raise UserError(f"method '{method}': {where} is {article} {name}; checkpoints hold only {ALLOWED}: {_hint(part)}")
