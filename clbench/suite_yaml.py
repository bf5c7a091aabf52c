"""Reading a suite file: YAML exactly as ``yaml.safe_load`` reads it, duplicate keys refused, ``include:`` merged.

The include rule: a suite's ``include:`` (a path or a list of paths, relative to
the including file) is read first, in order. The ``streams`` lists of the
included files add up; every other key is overridden by later includes and then
by the including file (mappings merge key by key, anything else is replaced), so
a ``streams`` key in the including file itself replaces the included streams.
Every problem is a ``UserError`` naming the file (and line, for YAML syntax).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .errors import UserError


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s meaning exactly, except that a key written twice in one mapping is an error.

    Keys brought in by a merge key (``<<: *base``) may be overridden by a key written
    beside it, as YAML's merge rule says; only keys written twice are refused.
    """


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue  # merged keys are the merge rule's to resolve (flatten_mapping), not duplicates
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict:
    """The mapping one suite file holds, without resolving ``include:``.

    Raises UserError for a missing file, a YAML syntax error (with line and column), a
    duplicate key, several documents, a Python tag, an empty file or a top level that is
    not a mapping.
    """
    if not path.is_file():
        raise UserError(f"{path}: suite file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: YAML syntax error: {exc.problem or exc.context}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read YAML: {exc}") from None
    if data is None:
        raise UserError(f"{path}: the suite is empty; it needs at least 'streams' and 'methods'")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a suite must be a mapping of keys (name, model, streams, methods, ...)")
    return data


def _deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys on top; where both hold a mapping, they merge key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def load_raw(path: Path, _stack: tuple[Path, ...] = ()) -> dict:
    """The suite's mapping with every ``include:`` merged in (the rule is in this module's docstring).

    Raises UserError for a circular include, an ``include:`` that is not a path or a list of
    paths, an included file that does not exist, or any problem ``read_yaml`` finds.
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved in _stack:
        raise UserError(f"{path}: include: circular include of {path.name}")
    data = read_yaml(path)
    includes = data.pop("include", [])
    includes = [includes] if isinstance(includes, str) else includes
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise UserError(f"{path}: include: must be a file path or a list of file paths")
    merged: dict = {}
    for inc in includes:
        inc_path = path.parent / inc
        if not inc_path.is_file():
            raise UserError(f"{path}: include: file '{inc}' not found (looked at {inc_path})")
        base = load_raw(inc_path, _stack + (resolved,))
        streams = merged.get("streams", []) + base.get("streams", []) if isinstance(merged.get("streams", []), list) and isinstance(base.get("streams", []), list) else base.get("streams")
        merged = _deep_merge(merged, base)
        if streams:
            merged["streams"] = streams  # the streams of several included suites add up
    return _deep_merge(merged, data)
