"""Reading, writing and overriding chip configs. Config files are data: parsed, never executed."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NvcimError
from .schema import ChipConfig
from .variants import Variant

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def parse_text(text: str, fmt: str, origin: str = "<string>") -> dict[str, Any]:
    """Parse TOML/YAML/JSON text into a dict, with the line of a syntax error where the parser knows it."""
    try:
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt == "json":
            data = json.loads(text)
        elif fmt in ("yaml", "yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise NvcimError(f"{origin}: unknown config format '{fmt}' (use .toml, .yaml, .yml or .json)")
    except tomllib.TOMLDecodeError as e:
        raise NvcimError(f"{origin}: malformed TOML: {e}") from None
    except json.JSONDecodeError as e:
        raise NvcimError(f"{origin}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except Exception as e:  # yaml.YAMLError carries its own line/column text
        if type(e).__module__.startswith("yaml"):
            raise NvcimError(f"{origin}: malformed YAML: {e}") from None
        raise
    if not isinstance(data, dict):
        raise NvcimError(f"{origin}: a config file must hold a table/mapping at the top level")
    return data


def load_config(path: str | Path) -> ChipConfig:
    """Load a chip config from a .toml, .yaml/.yml or .json file."""
    p = Path(path)
    if not p.is_file():
        raise NvcimError(f"config file not found: {p}")
    data = parse_text(p.read_text(encoding="utf-8"), p.suffix.lstrip(".").lower(), str(p))
    try:
        return ChipConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{p.name}: {e.path}", e.value, e.allowed, e.hint) from None


def dumps(config: ChipConfig, fmt: str = "toml") -> str:
    """Serialise a config to TOML, YAML or JSON text."""
    data = config.to_dict()
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt in ("yaml", "yml"):
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False))
    if fmt == "toml":
        return _to_toml(data)
    raise NvcimError(f"unknown config format '{fmt}' (use toml, yaml or json)")


def save_config(config: ChipConfig, path: str | Path) -> None:
    """Write a config; the format follows the file suffix."""
    p = Path(path)
    p.write_text(dumps(config, p.suffix.lstrip(".").lower()), encoding="utf-8")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def _to_toml(data: dict[str, Any], prefix: str = "") -> str:
    scalars = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = ("\n".join(scalars) + "\n") if scalars else ""
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{prefix}{k}"
            out += f"\n[{name}]\n" + _to_toml(v, name + ".")
    return out


def parse_value(text: str) -> Any:
    """Parse a command-line value: a JSON/TOML literal (number, bool, list) or else a plain string."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        return json.loads(t)
    except json.JSONDecodeError:
        return t


def override(config: ChipConfig, changes: dict[str, Any]) -> ChipConfig:
    """A validated copy of ``config`` with ``{"dotted.path": value}`` changes applied.

    String values are parsed as literals (``"0.2"`` -> 0.2), as on the command line's ``--set``.

    A change of a typed section's model (``device.programming.model``, ``mapping.scheme``) comes first and
    keeps the section's fields that the new model has (``sigma`` from one spread model to another); the
    fields of the new model are then set like any other, and those it lacks are errors.
    """
    data = copy.deepcopy(config.to_dict())
    changes = {_canonical(config, p): v for p, v in changes.items()}
    tags = [p for p in changes if isinstance(_section(config, p.split(".")[:-1]), Variant)
            and p.rsplit(".", 1)[-1] == _section(config, p.split(".")[:-1]).TAG]
    for path in tags + [p for p in changes if p not in tags]:
        value = changes[path]
        keys = path.split(".")
        node = data
        for i, k in enumerate(keys[:-1]):
            if not isinstance(node.get(k), dict):
                raise ConfigError(".".join(keys[: i + 1]), value, "a config section; see `nvcim presets NAME`")
            node = node[k]
        section = _section(config, keys[:-1])
        if isinstance(section, Variant):
            if path in tags:
                own = {section.TAG, *_new_model(section, path, value).field_names()}
                for k in [k for k in node if k not in own]:
                    del node[k]
                node[keys[-1]] = value
                continue
            if keys[-1] not in node:  # perhaps a field of the model: the typed section checks it
                node[keys[-1]] = value
                continue
        if keys[-1] in getattr(section, "RETIRED", {}):
            raise ConfigError(path, value, "absent: " + section.RETIRED[keys[-1]][1])
        if keys[-1] not in node:
            import difflib

            near = difflib.get_close_matches(keys[-1], list(node), n=1)
            raise ConfigError(path, value, "a known field: " + ", ".join(node),
                              f"Did you mean '{'.'.join(keys[:-1] + near)}'?" if near else "")
        if isinstance(node[keys[-1]], dict):
            raise ConfigError(path, value, "a field, not a section")
        node[keys[-1]] = parse_value(value) if isinstance(value, str) and not isinstance(
            node[keys[-1]], str) else value
    return ChipConfig.from_dict(data)


def _canonical(config: Any, path: str) -> str:
    """``path`` with a key that moved into a typed section (``circuit.adc_model``) at its new place
    (``circuit.adc.model``), so that older scripts and sweeps keep working."""
    parent, _, leaf = path.rpartition(".")
    moved = getattr(_section(config, parent.split(".") if parent else []), "MOVED", {})
    if leaf in moved:
        return ".".join([*(parent.split(".") if parent else []), *moved[leaf]])
    return path


def _section(config: Any, keys: list[str]) -> Any:
    """The config object at the dotted ``keys`` (None where there is none)."""
    for k in keys:
        config = getattr(config, k, None)
    return config


def _new_model(section: Variant, path: str, name: Any) -> type[Variant]:
    try:
        return section.REGISTRY.registry().config_class(name)  # type: ignore[no-any-return]
    except ConfigError as e:
        raise ConfigError(path, name, e.allowed, e.hint) from None


def parse_sets(items: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", ...]`` (the ``--set`` option) into an override dict."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise NvcimError(f"--set {item!r}: expected FIELD.PATH=VALUE, e.g. device.programming.sigma=0.2")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out
