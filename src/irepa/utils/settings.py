"""Settings sections as dataclasses: strict conversion from YAML and command-line values, and back.

The one piece of generic plumbing behind every ``--section.field VALUE`` and every YAML config.
A section is a dataclass with type hints (and optionally a ``validate()`` for its ranges); this
module turns plain values into it and refuses, in one line naming the dotted key, what no field
can mean: an empty or null value for a field that needs one, a fraction where a whole number is
meant, a non-finite number, a list of the wrong length, a mapping where a value is meant, and
unknown keys. Values given on the command line are read as YAML scalars (``1e-4``, ``true``,
``null``, ``[0.9, 0.95]``).
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from irepa.errors import ConfigError

_EXAMPLES = {int: "8", float: "1e-4", str: "name", bool: "true"}


def _strip_optional(tp: Any) -> tuple[bool, Any]:
    """``(whether None is allowed, the type without None)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        return optional, args[0] if len(args) == 1 else tp
    return tp is Any, tp


def _describe(tp: Any) -> str:
    if tp in (int, float):
        return {"int": "a whole number", "float": "a number"}[tp.__name__]
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a name or path"
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"{len(typing.get_args(tp))} comma-separated values"
    if origin is list:
        return "a comma-separated list"
    if is_dataclass(tp):
        return "a mapping of fields"
    return "a value"


def _example(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        return ",".join(_example(a) for a in typing.get_args(tp)[:3])
    return _EXAMPLES.get(tp, "VALUE")


def _refuse(where: str, what: str, tp: Any, optional: bool = False, example: Any = None) -> ConfigError:
    shown = example if isinstance(example, (int, float, str)) and not isinstance(example, bool) else _example(tp)
    fix = f"give {_describe(tp)}, e.g. --{where} {shown}"
    if optional:
        fix += f" (or --{where} null for the default behaviour)"
    return ConfigError(f"{where} {what}", fix=fix)


def _number(tp: type, value: Any, where: str, example: Any = None) -> int | float:
    """A finite int or float from a number or its text; fractions are refused where an int is meant."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _refuse(where, f"needs {_describe(tp)}, got {value!r}", tp, example=example)
    try:
        number = float(value) if isinstance(value, str) else value
        if isinstance(value, str) and tp is int:
            number = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
    except ValueError:
        raise _refuse(where, f"needs {_describe(tp)}, got {value!r}", tp, example=example) from None
    if not math.isfinite(number):
        raise _refuse(where, f"must be a finite number, got {value!r}", tp, example=example)
    if tp is int:
        if isinstance(number, float) and not number.is_integer():
            raise _refuse(where, f"needs a whole number, got {value!r}", tp, example=example)
        return int(number)
    return float(number)


def coerce(tp: Any, value: Any, where: str, example: Any = None) -> Any:
    """``value`` as type ``tp`` (``where``: the dotted key, named in the error; ``example``: a good value
    for the fix, e.g. the field's default), strictly."""
    optional, tp = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise _refuse(where, "is null but needs a value", tp, example=example)
    if isinstance(value, str) and not value.strip():
        raise _refuse(where, "is empty", tp, optional, example)
    if tp is Any:
        return value
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        shorthand = getattr(tp, "from_shorthand", None)
        if shorthand is not None and not isinstance(value, dict):
            value = shorthand(value, where)
        if not isinstance(value, dict):
            raise _refuse(where, f"needs a mapping of fields, got {value!r}", tp)
        return section_from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        elif isinstance(value, dict):
            raise _refuse(where, f"needs a list, got the mapping {value!r}", tp)
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        item_tps = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, (list, tuple)) or len(value) != len(item_tps):
            raise _refuse(where, f"needs {_describe(tp)}, got {value!r}", tp)
        return tuple(coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(item_tps, value)))
    if isinstance(value, (dict, list, tuple)):
        raise _refuse(where, f"needs a single value, got {value!r}", tp, optional)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise _refuse(where, f"needs true or false, got {value!r}", tp)
    if tp in (int, float):
        return _number(tp, value, where, example)
    if tp is str:
        if isinstance(value, bool):
            raise _refuse(where, f"needs a name, got {value!r}", tp, optional)
        if isinstance(value, float) and not math.isfinite(value):
            raise _refuse(where, f"needs a name, got {value!r}", tp, optional)
        return str(value)
    return value


def section_from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Dataclass ``cls`` from a nested mapping; an unknown key is refused naming it and the valid ones."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in fields(cls)}
    valid = list(defaults)
    for key in data:
        if key not in valid:
            dotted = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"unknown key {dotted}; valid keys{' of ' + where if where else ''}: {', '.join(valid)}",
                              fix="fix the spelling or remove it")
    return cls(**{key: coerce(hints[key], value, f"{where}.{key}" if where else key, defaults[key])
                  for key, value in data.items()})


def validate_sections(obj: Any) -> None:
    """Call ``validate()`` of ``obj`` and of every dataclass section inside it (inner sections first)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            validate_sections(value)
    check = getattr(obj, "validate", None)
    if callable(check):
        check()


def to_dict(obj: Any) -> dict:
    """Plain nested dict (tuples become lists) of a dataclass, for YAML, JSON and checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(asdict(obj))


def merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` laid over it, mapping by mapping."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``"a.b"``; a key ``data`` does not have is refused."""
    node = data
    *parents, leaf = dotted.split(".")
    for depth, p in enumerate(parents):
        if not isinstance(node.get(p), dict):
            where = ".".join(parents[:depth])
            valid = [k for k, v in node.items() if isinstance(v, dict)]
            raise ConfigError(f"unknown key {dotted}; valid sections{' of ' + where if where else ''}: "
                              f"{', '.join(valid)}", fix="fix the spelling")
        node = node[p]
    if leaf not in node:
        where = ".".join(parents)
        raise ConfigError(f"unknown key {dotted}; valid keys{' of ' + where if where else ''}: {', '.join(node)}",
                          fix="fix the spelling")
    node[leaf] = value


def parse_scalar(text: str) -> Any:
    """A command-line value read as YAML (``1e-4``, ``true``, ``null``, ``[0.9, 0.95]``); blank stays blank."""
    if not isinstance(text, str) or not text.strip():
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, dict) else value


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """The top-level mapping of a YAML file; a missing file, a folder or bad YAML is one ``ConfigError`` line."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder", fix="give a YAML file inside it")
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist", fix="give an existing YAML file")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid YAML ({' '.join(str(err).split())})", fix="fix the file") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections", fix="e.g. `train: {lr: 1e-4}`")
    return loaded


# ---------------------------------------------------------------------------------------------
# command line

CFG_DEST = "cfg:"  # argparse dest prefix of every --section.field option


def add_dotted_arguments(parser: argparse.ArgumentParser, keys: list[str], title: str, description: str,
                         aliases: dict[str, list[str]] | None = None,
                         choices: dict[str, tuple[str, ...]] | None = None) -> None:
    """``--KEY VALUE`` for every dotted key (values read as YAML scalars); ``aliases``: extra option
    strings for a key (short flags such as ``--steps`` for ``--sample.steps``); ``choices``: the valid
    names of a key, checked by argparse."""
    group = parser.add_argument_group(title, description)
    taken = set(parser._option_string_actions)
    aliases, choices = aliases or {}, choices or {}
    for key in keys:
        names = [n for n in (f"--{key}", *aliases.get(key, ())) if n not in taken]
        if f"--{key}" not in names:  # a shortcut of the same name already sets this field
            continue
        group.add_argument(*names, dest=f"{CFG_DEST}{key}", default=None, metavar="V", choices=choices.get(key),
                           help=argparse.SUPPRESS)


def overrides_from_args(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The ``--section.field VALUE`` options given (under ``prefix``, e.g. ``sample.``), YAML-parsed."""
    out = {}
    for name, value in vars(args).items():
        if name.startswith(CFG_DEST) and value is not None and name[len(CFG_DEST):].startswith(prefix):
            out[name[len(CFG_DEST):]] = parse_scalar(value) if isinstance(value, str) else value
    return out


def finite_float(text: str) -> float:
    """argparse ``type=`` for a float option: a finite number (``nan`` and ``inf`` refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value
