"""Each plugin's parameters as data: name, type, default, allowed values and description, read from its
pydantic ``Params`` / ``Options`` model (``clbench list methods --params``, ``clbench show method NAME``).
Imports no torch.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of a plugin (a method's ``Params``, a dataset's or executor's ``Options``), as
    ``clbench list KIND --params`` and ``clbench show method NAME`` show it.

    - ``name``: the key a suite writes; ``type``: e.g. ``float``, ``int or null``, ``list of int``, ``mapping``.
    - ``default``: as a suite would write it (``1.0``, ``null``, ``{fraction: 0.02, policy: class_balanced}``),
      or ``required``.
    - ``constraints``: e.g. ``> 0``, ``<= 1``, ``one of kl, eg, uniform``, ``keys: size, per_class, ...``;
      ``choices``: the allowed values of a ``Literal`` (empty otherwise).
    - ``description``: the field's ``description`` (``Field(description=...)`` or an attribute docstring), else the
      ``# comment`` on the field's line (or the ``#:`` comment above it) in the class's source; "" when none.
    """

    name: str
    type: str
    default: str
    constraints: tuple[str, ...] = ()
    description: str = ""
    choices: tuple = ()


def settings_model(kind: str, obj):
    """The pydantic model of a plugin's settings: a method's ``Params``, a dataset's or executor's ``Options``."""
    attr = {"methods": "Params", "datasets": "Options", "executors": "Options"}.get(kind)
    return getattr(obj, attr, None) if attr else None


def params_of(model) -> list[ParamInfo]:
    comments = _field_comments(model)
    out = []
    for key, info in model.model_fields.items():
        type_text, constraints, choices = _describe_type(info.annotation)
        constraints = _bounds(info.metadata) + constraints
        try:
            default = "required" if info.is_required() else _value_text(info.get_default(call_default_factory=True))
        except Exception:  # a default_factory that reads the other fields' values: known only once they are given
            default = "(computed)"
        out.append(ParamInfo(key, type_text, default, tuple(dict.fromkeys(constraints)),
                             (info.description or comments.get(key, "")).strip(), tuple(choices)))
    return out


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _bounds(metadata) -> list[str]:
    """``> 0``, ``<= 1``, ``length >= 1``, ... from a field's constraints (annotated_types' Gt, Ge, Lt, Le, MinLen, ...)."""
    out = []
    for m in metadata:
        for attr, op in _BOUNDS:
            if getattr(m, attr, None) is not None:
                out.append(f"{op} {_value_text(getattr(m, attr))}")
        if getattr(m, "min_length", None) is not None:
            out.append(f"length >= {m.min_length}")
        if getattr(m, "max_length", None) is not None:
            out.append(f"length <= {m.max_length}")
        if getattr(m, "multiple_of", None) is not None:
            out.append(f"a multiple of {_value_text(m.multiple_of)}")
    return out


def _describe_type(tp) -> tuple[str, list[str], list]:
    """(the type as words, constraints found inside it, the Literal choices of a plain or optional Literal)."""
    import types
    import typing

    from pydantic import BaseModel

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        text, constraints, choices = _describe_type(args[0])
        return text, _bounds(args[1:]) + constraints, choices
    if origin is typing.Literal:
        return " or ".join(dict.fromkeys(type(a).__name__ for a in args)), [f"one of {', '.join(map(_value_text, args))}"], list(args)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:  # Optional[X]
            text, constraints, choices = _describe_type(members[0])
            return f"{text} or null", constraints, choices
        texts, constraints = [], []
        for member in members:
            if typing.get_origin(member) is typing.Literal:
                texts.append(" or ".join(map(_value_text, typing.get_args(member))))
                continue
            text, inner, _ = _describe_type(member)
            texts.append(text)
            constraints += inner
        if len(members) < len(args):
            texts.append("null")
        return " or ".join(dict.fromkeys(texts)), constraints, []
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        if not args:
            return "list", [], []
        text, constraints, _ = _describe_type(args[0])
        return f"list of {text}", [f"each {c}" for c in constraints], []
    if origin is dict or tp is dict:
        return "mapping", [], []
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping", [f"keys: {', '.join(tp.model_fields)}"], []
    if tp is typing.Any:
        return "any", [], []
    return (tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")), [], []


def _value_text(value) -> str:
    """A value as a suite's YAML writes it: ``null``, ``true``, ``1.0``, ``kl``, ``"a photo of a {}."``, ``[0, 1]``, ``{k: v}``."""
    import json
    import re

    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_none=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if re.fullmatch(r"[A-Za-z_][\w.\-/]*", value) and value not in ("null", "true", "false", "yes", "no") \
            else json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_value_text, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value_text(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _field_comments(model) -> dict[str, str]:
    """Each field's comment in the source of ``model`` and its bases: the ``# ...`` ending the field's line, else the
    ``#: ...`` lines just above it (a subclass's comment wins); {} where the source cannot be read."""
    import inspect
    import io
    import textwrap
    import tokenize

    from pydantic import BaseModel

    out: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(textwrap.dedent(inspect.getsource(cls))).readline))
        except (OSError, TypeError, tokenize.TokenError, IndentationError, SyntaxError):
            continue
        indent = next((len(t.string) for t in tokens if t.type == tokenize.INDENT), None)
        by_row: dict[int, list] = {}
        for t in tokens:
            by_row.setdefault(t.start[0], []).append(t)
        above: list[str] = []
        for row in sorted(by_row):
            line = [t for t in by_row[row] if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)]
            comments = [t.string for t in line if t.type == tokenize.COMMENT]
            code = [t for t in line if t.type != tokenize.COMMENT]
            if not code:  # a comment line: '#:' lines document the field below them
                above = above + [c[2:].strip() for c in comments if c.startswith("#:")] if comments else []
                continue
            if (len(code) >= 2 and code[0].type == tokenize.NAME and code[1].string == ":" and code[0].start[1] == indent
                    and code[0].string in model.model_fields):
                text = comments[-1].lstrip("#").strip() if comments else " ".join(above)
                if text:
                    out[code[0].string] = text
            above = []
    return out
