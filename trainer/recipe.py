"""Recipes: the config tree read from a TOML file plus `--section.key=value` overrides, and written back.

Values are checked against each section's annotations (bool, int, float, str, tuples and `Literal` choices),
then each section checks its own choices and ranges when it is built; every error names the key at fault.
`dump_toml(cfg)` writes a recipe `load_config` reads back to the same Config (a run folder's config.toml).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trainer.config import Config, ConfigError, to_dict


@dataclass(frozen=True)
class Override:
    """A command-line value: its TOML reading, and the raw text for keys typed as strings
    (`--run.name=2024` names a run "2024"; TOML would read an integer)."""

    raw: str
    value: Any


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check (and gently convert) one value against its dataclass annotation."""
    if isinstance(value, Override):
        value = value.raw if hint is str and not isinstance(value.value, str) else value.value
    origin = typing.get_origin(hint)
    if origin is Literal:
        valid = typing.get_args(hint)
        if value not in valid:
            raise ConfigError(f"{key}: unknown value {value!r}; valid: {', '.join(map(repr, valid))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type, _) = typing.get_args(hint)
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unsupported union type {hint}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:  # undecodable bytes from the command line: config.toml is UTF-8
                raise ConfigError(f"{key}: {value!r} is not valid UTF-8 text") from None
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")


def _section_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from nested dicts, naming the offending key and the valid ones on any mismatch, and
    where its value came from: the override (`--section.key=value`) that set it, else `source`."""
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    section_types = typing.get_type_hints(Config)
    kwargs = {}
    for name, values in tree.items():
        if name not in sections:
            given = next((v for v in values.values() if isinstance(v, Override)), None)
            at = _origin(name, next(iter(values)), given) if isinstance(values, dict) and given else source
            raise ConfigError(f"{at}: unknown section [{name}]; valid sections: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table of keys")
        cls = section_types[name]
        fields = _section_types(cls)
        checked = {}
        for key, value in values.items():
            at = _origin(name, key, value) if isinstance(value, Override) else source
            if key not in fields:
                raise ConfigError(
                    f"{at}: unknown key {name}.{key}; valid keys in [{name}]: {', '.join(fields)}"
                )
            checked[key] = _coerce(value, fields[key], f"{at}: {name}.{key}")
        try:
            kwargs[name] = cls(**checked)
        except ValueError as err:  # a section's own checks: choices and ranges, naming the key
            overridden = [k for k, v in values.items() if isinstance(v, Override)]
            key = next((k for k in sorted(overridden, key=len, reverse=True) if _names(err, name, k)), None)
            at = _origin(name, key, values[key]) if key else source
            raise ConfigError(f"{at}: {err}") from None
    return Config(**kwargs)


def _origin(section: str, key: str, value: Override | None) -> str:
    """`override --section.key=value`, as typed: what an error about a command-line value blames."""
    return f"override --{section}.{key}={value.raw}" if value is not None else f"override --{section}.{key}"


def _names(err: Exception, section: str, key: str) -> bool:
    """Whether a section's check message is about `section.key` (it starts with the key's name)."""
    text = str(err)
    return any(text.startswith(f"{prefix}{section}.{key}{end}") for prefix in ("", "--") for end in ":[= ")


def _parse_override_value(text: str) -> Override:
    """Override values are TOML literals; bare words fall back to strings (`--loss.name=dbm_ce`)."""
    try:
        return Override(text, tomllib.loads(f"v = {text}")["v"])
    except tomllib.TOMLDecodeError:
        return Override(text, text)


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--section.key=value` (or `section.key=value`) strings to a nested dict, returning a copy."""
    merged = {k: dict(v) for k, v in tree.items()}
    for raw in overrides:
        text = raw[2:] if raw.startswith("--") else raw
        path, sep, value = text.partition("=")
        section, dot, key = path.partition(".")
        if not sep or not dot or not section or not key:
            raise ConfigError(f"override {raw!r}: expected --section.key=value")
        merged.setdefault(section, {})[key] = _parse_override_value(value)
    return merged


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a TOML recipe (or defaults when path is None) and apply command-line overrides."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            tree = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return from_dict(apply_overrides(tree, list(overrides)), source)


def dump_toml(cfg: Config) -> str:
    """The resolved config as a TOML recipe that load_config reads back to the same Config."""
    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _toml_char(c: str) -> str:
    """One character of a TOML basic string: quotes, backslashes and control characters escaped (a raw
    newline or DEL would make config.toml unreadable), everything else as it is (the file is UTF-8)."""
    if c in '"\\':
        return "\\" + c
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"\\u{ord(c):04x}"
    return c


def launcher_precision(overrides: list[str]) -> list[str]:
    """`accelerate launch --mixed_precision bf16` as `--step.precision=bf16` (the step runs its own autocast,
    so Accelerate's would otherwise be ignored). Accelerate exports "no" when the flag is absent too, so "no"
    cannot mean fp32 here: `--step.precision=fp32` says that. fp16 is refused: its loss scaler reads a
    host-side flag every step, which a captured, sync-free step cannot do, and bf16 needs no scaler."""
    flag = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if flag in ("", "no"):
        return overrides
    if flag != "bf16":
        raise ConfigError(
            f"accelerate launch --mixed_precision {flag}: fastlt's step runs in bf16 or fp32 (fp16 needs a "
            "gradient scaler that syncs with the host every step); use --mixed_precision bf16 or "
            "--step.precision=fp32"
        )
    explicit = [o for o in overrides if o.lstrip("-").split("=", 1)[0] == "step.precision"]
    if explicit and explicit[-1].split("=", 1)[1] != flag:
        raise ConfigError(
            f"accelerate launch --mixed_precision {flag} and {explicit[-1]} disagree: give only one of them"
        )
    return [*overrides, f"--step.precision={flag}"]
