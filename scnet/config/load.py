"""From YAML files and ``key=value`` overrides to a validated :class:`~scnet.config.schema.Config`, and back.

The path reads top to bottom:

1. :func:`read_config_tree` reads a file and its ``_base_`` files (recursively, relative to the file that
   names them) into one plain nested dict, remembering for every key the file that set it last.
2. :func:`parse_override` turns ``optim.lr=0.2`` into ``{"optim": {"lr": 0.2}}``, merged on top.
3. :func:`config_from_dict` checks every key against the schema, coerces each value to its declared type,
   builds the frozen dataclasses and runs the semantic checks.

Merging follows mmpretrain's convention: mappings merge key by key (later wins), lists and scalars are
replaced whole, and ``_delete_: true`` in a mapping replaces the base's mapping instead of merging into it
(keys it leaves out fall back to the schema defaults). Nothing is evaluated: YAML is read with
``yaml.safe_load`` and the only "code" is the schema's type hints.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from .schema import Config, ConfigError, check, is_section, schema_keys, sections, type_name, yaml_value

COMMAND_LINE = "command line"
BASE_KEY = "_base_"
DELETE_KEY = "_delete_"

Origins = dict[str, str]
"""Dotted key (of a section or a leaf) -> where its value came from: a file path or ``"command line"``."""

# Keys that existed once, with what to write instead: an old config gets this hint, not "unknown key".
REMOVED_KEYS = {
    "data.demo": "removed; write data.root: demo to train on the built-in demo set (drawn at data/demo)",
}


# --------------------------------------------------------------------------------------------------------------
# Public API


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """The config of ``path`` (with its ``_base_`` files) and the ``key=value`` ``overrides``, validated.

    ``path=None`` starts from the schema defaults (the authors' recipe).

    Raises:
        ConfigError: one line naming the file (or ``command line``) and the dotted key: an unknown key
            (with the closest valid one suggested), a value of the wrong type, a failed semantic check,
            a missing file, invalid YAML or an inheritance cycle.
    """
    tree, origins = read_config_tree(path) if path is not None else ({}, {})
    return _resolve(tree, origins, overrides)


def apply_overrides(cfg: Config, overrides: Sequence[str], source: str = "config") -> Config:
    """``cfg`` with ``key=value`` overrides applied and validated (e.g. a resumed run's config plus changes)."""
    tree = config_to_dict(cfg)
    return _resolve(tree, _origins_of(tree, source), overrides)


def config_from_dict(data: Mapping[str, Any], source: str = "dict", origins: Mapping[str, str] | None = None) -> Config:
    """Build and validate a Config from a plain nested dict (parsed YAML, a checkpoint's saved config).

    Missing keys take their defaults. ``source`` names the dict in error messages; ``origins`` may give a
    source per dotted key instead (as :func:`read_config_tree` returns).
    """
    if not isinstance(data, Mapping):
        raise ConfigError("", f"a config must be a mapping of keys, got {_show_value(data)}", source)
    origins = dict(origins) if origins is not None else _origins_of(data, source)
    cfg = _build(Config, data, "", origins)
    problems = check(cfg)
    if problems:
        key, problem = problems[0]
        raise ConfigError(key, problem, origins.get(key, "default"))
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict in schema order: tuples become lists, so it dumps as plain YAML or JSON."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif isinstance(value, (tuple, list)):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for the (short, scalar) lists: ``scale: [0.08, 1.0]``."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def format_config(cfg: Config) -> str:
    """The config as YAML text in schema order (what ``--print-config`` shows; loading it gives an equal Config)."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def dump_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML to ``path`` (parent folders created); ``load_config(path)`` gives it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Resolved scnet config: every key, bases and overrides applied. Load with scnet.config.load_config.\n"
    path.write_text(header + format_config(cfg), encoding="utf-8")
    return path


def read_config_tree(path: str | os.PathLike) -> tuple[dict[str, Any], Origins]:
    """The merged, not yet validated, contents of ``path`` and its ``_base_`` files, with their origins."""
    return _read(Path(path), ())


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=0.2"`` -> ``("optim.lr", 0.2)``: the value as YAML, or as raw text for string keys.

    String keys keep the text as typed when YAML would read it as something else, so ``output_dir=1.10``
    stays ``"1.10"`` and ``data.root=a:b`` stays a path; ``null`` still clears an optional string. A key that
    takes a bool as well as a string (``model.pretrained``) reads ``true``/``false`` and numbers as YAML does, so
    that ``true`` is true and a number is refused as the same value in a file would be.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(text, "an override is key=value, e.g. optim.lr=0.2", COMMAND_LINE)
    tp = _leaf_types().get(key)
    takes_str = _accepts(tp, str)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if takes_str:
            return key, raw.strip()
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(key, f"cannot read {raw!r} as YAML ({problem})", COMMAND_LINE) from None
    if takes_str and value is not None and not isinstance(value, str):
        if not (_accepts(tp, bool) and isinstance(value, (bool, int, float))):
            return key, raw.strip()
    return key, value


# --------------------------------------------------------------------------------------------------------------
# Reading files and merging


def _show_path(path: Path) -> str:
    """A path as the user would write it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], Origins]:
    resolved = path.expanduser().resolve()
    shown = _show_path(resolved)
    if resolved in chain:
        cycle = " -> ".join(_show_path(p) for p in (*chain[chain.index(resolved) :], resolved))
        raise ConfigError(BASE_KEY, f"inheritance cycle: {cycle}", _show_path(chain[-1]))
    if not resolved.is_file():
        if chain:
            raise ConfigError(BASE_KEY, f"no such base file {shown}", _show_path(chain[-1]))
        raise ConfigError("", "no such config file", shown)
    try:
        raw = yaml.safe_load(resolved.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("", f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}", shown) from None
    if raw is None:
        raw = {}  # an empty file is an empty config
    if not isinstance(raw, dict):
        raise ConfigError("", f"a config file must be a mapping of keys, got {_show_value(raw)}", shown)
    own = _normalise(raw, shown, "")
    bases = own.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(BASE_KEY, f"must be a file path or a list of them, got {_show_value(bases)}", shown)

    tree: dict[str, Any] = {}
    origins: Origins = {}
    for base in bases:
        base_path = Path(base).expanduser()
        if not base_path.is_absolute():
            base_path = resolved.parent / base_path  # relative to the file that names it, not the cwd
        base_tree, base_origins = _read(base_path, (*chain, resolved))
        _merge(tree, origins, base_tree, base_origins)
    _merge(tree, origins, own, _origins_of(own, shown))
    return tree, origins


def _normalise(tree: dict, source: str, prefix: str) -> dict[str, Any]:
    """String keys everywhere (YAML allows ``1:`` or ``yes:``); dotted keys are rejected with a hint."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        name = str(k)
        if "." in name:
            head, _, rest = name.partition(".")
            raise ConfigError(
                prefix + name,
                f"dotted keys are for command-line overrides; in YAML nest them ({head}: {{{rest}: ...}})",
                source,
            )
        out[name] = _normalise(v, source, f"{prefix}{name}.") if isinstance(v, dict) else v
    return out


def _origins_of(tree: Mapping[str, Any], source: str, prefix: str = "") -> Origins:
    """Every dotted key of ``tree`` (sections and leaves) -> ``source``."""
    origins: Origins = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        origins[key] = source
        if isinstance(v, Mapping):
            origins.update(_origins_of(v, source, key + "."))
    return origins


def _drop(origins: Origins, key: str) -> None:
    """Forget the origins of ``key`` and everything below it."""
    for k in [k for k in origins if k == key or k.startswith(key + ".")]:
        del origins[k]


def _merge(
    dst: dict[str, Any], dst_origins: Origins, src: Mapping[str, Any], src_origins: Origins, prefix: str = ""
) -> None:
    """Merge ``src`` into ``dst`` in place: mappings key by key, everything else replaced; ``_delete_`` replaces."""
    delete = src.get(DELETE_KEY, False)
    if not isinstance(delete, bool):
        key = prefix + DELETE_KEY
        raise ConfigError(key, f"must be true or false, got {_show_value(delete)}", src_origins.get(key, "default"))
    if delete:
        # The base's section is dropped; keys src leaves out fall back to the schema defaults.
        dst.clear()
        for k in [k for k in dst_origins if k.startswith(prefix)]:
            del dst_origins[k]
    for name, value in src.items():
        if name == DELETE_KEY:
            continue
        key = prefix + name
        if isinstance(value, Mapping):
            if not isinstance(dst.get(name), dict):
                _drop(dst_origins, key)
                dst[name] = {}
            _merge(dst[name], dst_origins, value, src_origins, key + ".")
        else:
            _drop(dst_origins, key)
            # Copy lists so that a later merge or override never edits a base's value in place.
            dst[name] = list(value) if isinstance(value, list) else value
        dst_origins[key] = src_origins.get(key, "default")


def _resolve(tree: dict[str, Any], origins: Origins, overrides: Sequence[str]) -> Config:
    """Merge the overrides into the tree (each one nested under its dotted key), then build and validate."""
    if isinstance(overrides, str):
        overrides = [overrides]  # a lone "a=b" would otherwise be iterated character by character
    for text in overrides:
        key, value = parse_override(text)
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _merge(tree, origins, nested, _origins_of(nested, COMMAND_LINE))
    return config_from_dict(tree, origins=origins)


# --------------------------------------------------------------------------------------------------------------
# Checking keys and coercing values to the schema's types


@functools.cache
def _leaf_types() -> dict[str, Any]:
    return {info.key: info.type for info in schema_keys()}


@functools.cache
def _all_keys() -> tuple[str, ...]:
    return (*sections(), *_leaf_types())


def _suggest(key: str) -> str:
    """``"; did you mean optim.lr?"`` for the valid key closest to ``key``, or ``""``."""
    # Never the key's own section: "model.foo" -> "did you mean model?" would not help.
    known = [k for k in _all_keys() if not key.startswith(k + ".")]
    section, _, last = key.rpartition(".")
    # 1. A typo among its siblings ("optim.lrr", "data.batchsize", "optimizer").
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == section}
    close = [siblings[m] for m in difflib.get_close_matches(last, list(siblings), n=1)]
    # 2. The right name in the wrong section ("train.lr", or a bare "epochs").
    close = close or [k for k in known if k.rpartition(".")[2] == last and k != key][:1]
    # 3. A typo of the name, in another section ("train.lrr").
    if not close:
        by_last = {k.rpartition(".")[2]: k for k in reversed(known)}
        close = [by_last[m] for m in difflib.get_close_matches(last, list(by_last), n=1)]
    return f"; did you mean {close[0]}?" if close else ""


def _build(cls: type, data: Any, prefix: str, origins: Mapping[str, str]) -> Any:
    """The dataclass ``cls`` from ``data``: unknown keys and wrong types are errors, missing keys take defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        source = origins.get(key, "default")
        if name not in names:
            raise ConfigError(key, REMOVED_KEYS.get(key) or f"unknown key{_suggest(key)}", source)
        tp = hints[name]
        if is_section(tp):
            if value is None:
                value = {}  # "model:" with nothing below it
            if not isinstance(value, Mapping):
                raise ConfigError(
                    key, f"is a section, expected a mapping of its keys, got {_show_value(value)}", source
                )
            kwargs[name] = _build(tp, value, key + ".", origins)
        else:
            kwargs[name] = coerce_value(value, tp, key, source)
    return cls(**kwargs)


class _Mismatch(Exception):
    """A value that does not fit a type; the detail (if any) is added to the message."""


_NONE_WORDS = ("none", "null", "~")
# A float written without a dot ("1e-4") is a string to YAML 1.1; accept it, as any reader would expect.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def coerce_value(value: Any, tp: Any, key: str = "", source: str = "default") -> Any:
    """``value`` converted to the schema type ``tp``, or a ConfigError naming ``key`` and ``source``.

    int -> float is a promotion; float -> int, bool <-> number and str -> number are errors (except a
    number-shaped string for a float, see ``_NUMBER``); a str key takes any scalar; Optional takes
    null/none; tuples and lists check their length and element types and also take ``"0.25,1"``; a list of
    strings takes one string as a list of one.
    """
    try:
        return _coerce(value, tp)
    except _Mismatch as exc:
        detail = f"; {exc}" if str(exc) else ""
        raise ConfigError(key, f"expected {type_name(tp)}, got {_show_value(value)}{detail}", source) from None


def _coerce(value: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)):
            return None
        if bool in args and str in args and isinstance(value, (int, float)) and not isinstance(value, bool):
            # True or a path (model.pretrained): 1 is not true here, and a file named 1 is written "1".
            raise _Mismatch("a number is neither true/false nor a path (a file named with digits is ./NAME)")
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                pass
        raise _Mismatch("")
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise _Mismatch("")
    if origin in (tuple, list):
        if isinstance(value, str) and "," in value:
            try:
                value = [yaml.safe_load(part) for part in value.split(",")]
            except yaml.YAMLError:
                raise _Mismatch("") from None
        elif isinstance(value, str) and origin is list and args[0] is str:
            value = [value]  # one name for a list of names: model.freeze=stem
        if not isinstance(value, (list, tuple)):
            raise _Mismatch("")
        if origin is tuple:
            if len(value) != len(args):
                raise _Mismatch(f"needs {len(args)} items")
            return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))
        return [_coerce(v, args[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch("")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)
        raise _Mismatch("")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        raise _Mismatch("")
    raise TypeError(f"unsupported schema type {tp!r}")  # a schema bug, not a user error


def _accepts(tp: Any, cls: type) -> bool:
    """Whether the schema type ``tp`` is ``cls`` or a union with it (``str | None``; not a Literal of strings)."""
    return tp is cls or (typing.get_origin(tp) in (typing.Union, types.UnionType) and cls in typing.get_args(tp))


def _show_value(value: Any, limit: int = 60) -> str:
    """A value for an error message: short, one line, with its YAML type."""
    text = repr(value) if isinstance(value, str) else yaml_value(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    kind = {dict: "mapping", list: "list", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{text} ({kind})"
