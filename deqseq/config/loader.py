"""Loading configs on OmegaConf structured configs: YAML files, dotted key=value overrides and dicts.

`load_config(path, overrides)` starts from the defaults (OmegaConf.structured of the Config dataclasses), applies
a YAML file, then overrides such as `train.max_steps=200` or `solver.forward.tol=1e-5`, and builds the dataclasses,
whose own checks then run. OmegaConf holds the typed values (conversion, type checks, unknown keys, dumping);
this module only adds what it lacks: one-line errors under the full dotted key with "did you mean", strict booleans,
string fields that keep an override's text verbatim (run.name=007), and finite numbers.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from difflib import get_close_matches
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..checks import ConfigError
from ..data import source_name
from .sections import Config, field_types

# Keys earlier versions had. Configs saved in checkpoints load without them; a file or override naming one is told.
RETIRED_KEYS = {
    "solver.warm_start": "warm starts are an argument now: generate(..., warm_start=True) or --warm-start",
}


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@cache
def _dotted_keys(cls: type) -> tuple[str, ...]:
    """Every dotted key below cls, relative to it, sections included (e.g. "forward", "forward.tol")."""
    keys: list[str] = []
    for name, tp in field_types(cls).items():
        keys.append(name)
        if _is_section(tp):
            keys.extend(f"{name}.{sub}" for sub in _dotted_keys(tp))
    return tuple(keys)


def _unknown_key(key: str, cls: type, prefix: str) -> ConfigError:
    """The error for `key`, whose lookup failed below `prefix` (an instance of cls), with a suggestion."""
    relative = key[len(prefix) + 1:] if prefix else key
    match = [_join(prefix, m) for m in get_close_matches(relative, _dotted_keys(cls), n=1)]
    everything = _dotted_keys(Config)
    if not match:
        match = get_close_matches(key, everything, n=1)
    if not match:
        # A right name in the wrong section (train.seed for run.seed): compare last components only.
        leaves = {k.rsplit(".", 1)[-1]: k for k in reversed(everything)}
        match = [leaves[m] for m in get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1)]
    if match:
        return ConfigError(f"unknown key '{key}'; did you mean '{match[0]}'?")
    where = f"keys under '{prefix}'" if prefix else "sections"
    return ConfigError(f"unknown key '{key}'; allowed {where}: {', '.join(field_types(cls))}")


def _show(value: Any) -> str:
    """A value as a user would have written it in YAML, on one line."""
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    except yaml.YAMLError:  # not YAML-able (an object handed to config_from_dict)
        return repr(value)
    return text[:-3].strip() if text.endswith("...") else text


def _describe(tp: Any, plural: bool = False) -> str:
    """What a field of type tp accepts, in words."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = " or ".join(_describe(a, plural) for a in rest)
        return f"{inner} or null" if type(None) in args else inner
    if tp is bool:
        return "true or false"
    if tp is int:
        return "integers" if plural else "an integer"
    if tp is float:
        return "numbers" if plural else "a number"
    if tp is str:
        return "strings" if plural else "a string"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0], plural=True)}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_describe(args[0], plural=True)}"
        return f"a list of {len(args)} values"
    if origin is list:
        return f"a list of {_describe(args[0], plural=True)}" if args else "a list"
    if origin is dict or tp is dict:
        return "mappings" if plural else "a mapping"
    return "values" if plural else "a value"


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as one short phrase with its position."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"at line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _section_error(key: str, value: Any, cls: type, raw: str | None = None) -> ConfigError:
    shown = raw if raw is not None else _show(value)
    return ConfigError(f"{key}={shown}: expected a mapping of {cls.__name__} keys ({', '.join(field_types(cls))})")


def _declared_type(key: str) -> Any:
    """The declared type of the dotted key (a section's dataclass for a section); ConfigError when unknown or
    retired."""
    if key in RETIRED_KEYS:
        raise ConfigError(f"'{key}' is no longer a config key: {RETIRED_KEYS[key]}")
    cls, prefix = Config, ""
    parts = key.split(".")
    for i, name in enumerate(parts):
        fields = field_types(cls)
        if name not in fields:
            raise _unknown_key(key, cls, prefix)
        tp, here = fields[name], _join(prefix, name)
        if i == len(parts) - 1:
            return tp
        if not _is_section(tp):
            if typing.get_origin(tp) is dict or tp is dict:
                if i == len(parts) - 2:  # one key of a mapping: data.options.vocab=32
                    return Any
                raise ConfigError(f"unknown key '{key}'; '{here}' holds one level of keys, e.g. {here}.name=value")
            raise ConfigError(f"unknown key '{key}'; '{here}' is a single value, not a section")
        cls, prefix = tp, here
    raise AssertionError("unreachable")


def _accepts(tp: Any, kind: type) -> bool:
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return tp is kind or (union and kind in typing.get_args(tp))


def _fixed_length(tp: Any) -> int | None:
    """The length a fixed-length tuple type (tuple[float, float]) requires; None for any other type."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis:
        return len(args)
    return None


def _as_integer(value: Any) -> Any:
    """1e3 or "1e3" (YAML 1.1 reads it as a string) as the int 1000; anything else unchanged."""
    try:
        number = float(value) if isinstance(value, str | float) else None
    except ValueError:
        return value
    return int(number) if number is not None and number.is_integer() else value


def _assign(cfg: DictConfig, key: str, value: Any, raw: str | None = None) -> None:
    """Set the dotted key of cfg to value (a whole section when value is a mapping); raw is an override's text."""
    tp = _declared_type(key)
    if _is_section(tp):
        if value is None and raw is None:  # an empty section heading in a file
            return
        if not isinstance(value, Mapping):
            raise _section_error(key, value, tp, raw)
        for name, sub in value.items():
            _assign(cfg, _join(key, str(name)), sub)
        return

    def bad() -> ConfigError:
        return ConfigError(f"{key}={raw if raw is not None else _show(value)}: expected {_describe(tp)}")

    if raw is not None and value is not None and not isinstance(value, str) and _accepts(tp, str):
        value = raw.strip()  # YAML read run.name=007 as a number: a string field takes the text as written
    if _accepts(tp, bool) and value is not None and not isinstance(value, bool):
        raise bad()  # OmegaConf would turn 1 or "yes" into True
    if _accepts(tp, int):
        value = _as_integer(value)
    if _fixed_length(tp) not in (None, len(value) if isinstance(value, list | tuple) else None):
        raise bad()  # OmegaConf 2.3 does not check a tuple's length (2.4 does)
    try:
        OmegaConf.update(cfg, key, value, merge=False)
    except OmegaConfBaseException:
        raise bad() from None
    stored = OmegaConf.select(cfg, key)
    if isinstance(stored, float) and not math.isfinite(stored):
        raise bad()


def _structured(cfg: Config) -> DictConfig:
    """cfg as a writable OmegaConf structured config (frozen sections, SolverConfig, are read-only there)."""
    node = OmegaConf.structured(cfg)
    _writable(node)
    return node


def _defaults() -> DictConfig:
    """The default Config as a writable OmegaConf structured config."""
    return _structured(Config())


def _writable(node: DictConfig) -> None:
    OmegaConf.set_readonly(node, False)
    for name in node:
        child = node._get_node(name)
        if isinstance(child, DictConfig):
            _writable(child)


def _rekey(message: str, cls: type, path: str) -> str:
    """Turn a validation message "ClassName.field=..." into "dotted.path.field=..."."""
    owner = cls.__name__ + "."
    if path and message.startswith(owner):
        return path + "." + message[len(owner):]
    return f"{path}: {message}" if path else message


def _instantiate(node: DictConfig, cls: type, path: str = "") -> Any:
    """The dataclass cls built from node, innermost sections first, so each check's message names its key."""
    kwargs = {}
    for name, tp in field_types(cls).items():
        if _is_section(tp):
            kwargs[name] = _instantiate(node[name], tp, _join(path, name))
        else:
            value = node[name]
            kwargs[name] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ConfigError(_rekey(str(err), cls, path)) from None


def _apply_mapping(cfg: DictConfig, mapping: Any) -> None:
    """Apply a nested mapping by section (a YAML file or a config dict)."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"expected a mapping of sections ({', '.join(field_types(Config))}), "
                          f"got {type(mapping).__name__}")
    for name, value in mapping.items():
        _assign(cfg, str(name), value)


def _apply_override(cfg: DictConfig, text: str) -> str:
    """Apply one dotted key=value override (the value read as YAML); return its key."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. train.max_steps=200)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key before '=' (e.g. train.max_steps=200)")
    tp = _declared_type(key)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        if not _accepts(tp, str):
            raise ConfigError(f"{key}={raw}: cannot parse the value ({_yaml_problem(err)})") from None
        value = raw.strip()
    _assign(cfg, key, value, raw)
    return key


def _read_yaml(path: str | Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML {_yaml_problem(err)}") from None
    return {} if data is None else data


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML file at path (if any), then the dotted key=value overrides, in that order."""
    cfg = _defaults()
    if path is not None:
        data = _read_yaml(path)
        try:
            _apply_mapping(cfg, data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    _apply_overrides(cfg, overrides)
    return _instantiate(cfg, Config)


def _apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> None:
    """Apply key=value overrides in order. Options belong to their source: when the overrides switch data.source
    to another source, the options of the earlier layers (defaults, file, saved run) are dropped, and only the
    data.options keys the overrides give themselves stay, whatever their order."""
    scheme, earlier = source_name(cfg.data.source), set(cfg.data.options)
    given: set[str] = set()
    for text in overrides:
        key = _apply_override(cfg, text)
        if key.startswith("data.options."):
            given.add(key[len("data.options."):])
        elif key == "data.options":
            earlier = set()  # replaced as a whole
    if source_name(cfg.data.source) != scheme:
        for name in earlier - given:
            del cfg.data.options[name]


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """A copy of cfg with dotted key=value overrides applied (values parsed as YAML, then checked by type)."""
    node = _structured(cfg)
    _apply_overrides(node, overrides)
    return _instantiate(node, Config)


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """The Config of a nested dict by section (as config_to_dict writes it, also by earlier versions: retired keys
    are dropped); missing keys keep their defaults."""
    cfg = _defaults()
    _apply_mapping(cfg, _without_retired(d))
    return _instantiate(cfg, Config)


def _without_retired(d: Any, prefix: str = "") -> Any:
    """d without the RETIRED_KEYS below prefix."""
    if not isinstance(d, Mapping):
        return d
    return {k: _without_retired(v, _join(prefix, str(k))) for k, v in d.items()
            if _join(prefix, str(k)) not in RETIRED_KEYS}


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """cfg as a nested dict of plain YAML-able values (tuples become lists); config_from_dict inverts it."""
    return _lists(OmegaConf.to_container(OmegaConf.structured(cfg)))


def _lists(value: Any) -> Any:
    """value with tuples turned into lists, recursively (YAML has no tuples)."""
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def dump_yaml(cfg: Config) -> str:
    """cfg as a YAML document, sections in order; load_config reads it back to an equal Config."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
