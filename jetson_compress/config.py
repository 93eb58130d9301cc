"""Run configuration: YAML defaults, a user YAML on top, command-line flags on top of that.

The resolved configuration is a plain nested dict; :func:`save_resolved` writes it next to every output.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import yaml

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(ValueError):
    pass


def _load_yaml(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def deep_merge(base: Dict[str, Any], override: Dict[str, Any], where: str = "") -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _kind(default: Any) -> Optional[str]:
    """What a value must be, judged by its default (None: anything, the default is null)."""
    if default is None:
        return None
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (list, tuple)):
        return "a list"
    if isinstance(default, dict):
        return "a mapping"
    return None


def _fits(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def _check_against_defaults(value: Any, default: Any, dotted: str, where: str) -> None:
    """Refuse keys the defaults do not have and values of another type than the default's (null: any)."""
    if not _fits(value, default):
        raise ConfigError(f"{where}: {dotted} must be {_kind(default)}, got {value!r} ({type(value).__name__})")
    if isinstance(default, dict):
        unknown = sorted(set(value) - set(default))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(f'{dotted}.{k}' for k in unknown)}; "
                              f"known keys of {dotted}: {sorted(default)}")
        for key, sub in value.items():
            _check_against_defaults(sub, default[key], f"{dotted}.{key}", where)


def load_config(path: Optional[str] = None, sets: Iterable[str] = ()) -> Dict[str, Any]:
    """Defaults, then ``path`` (if given), then ``--set a.b=value`` overrides.

    Unknown sections and keys, and values of another type than the default's, are refused with the file (or the
    ``--set``) and the dotted key named. A key whose default is null takes any value.
    """
    defaults = _load_yaml(DEFAULT_CONFIG_PATH)
    cfg = copy.deepcopy(defaults)
    if path:
        user = _load_yaml(Path(path))
        unknown = set(user) - set(cfg)
        if unknown:
            raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; known: {sorted(cfg)}")
        for section, value in user.items():
            _check_against_defaults(value, defaults[section], section, str(path))
        cfg = deep_merge(cfg, user)
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.split(".")
        node, default = cfg, defaults
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                raise ConfigError(f"--set {item!r}: no section {k!r}")
            node, default = node[k], default.get(k) if isinstance(default, dict) else None
        leaf = keys[-1]
        if node is cfg:
            raise ConfigError(f"--set {item!r}: expected section.key=value (a whole section cannot be set)")
        if isinstance(default, dict) and leaf not in default:
            raise ConfigError(f"--set {item!r}: unknown key {dotted!r}; known keys of {'.'.join(keys[:-1])}: "
                              f"{sorted(default)}")
        value = _parse_value(raw)
        if isinstance(default, dict):
            _check_against_defaults(value, default[leaf], dotted, f"--set {item!r}")
        node[leaf] = value
    return cfg


def override(cfg: Dict[str, Any], dotted: str, value: Any) -> None:
    """Apply one explicit command-line flag (ignored when the flag was not given, i.e. value is None)."""
    if value is None:
        return
    node = cfg
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def save_resolved(cfg: Dict[str, Any], out_dir: Path, name: str = "config.resolved.yaml") -> Path:
    from compress.checkpoint import atomic_write_bytes

    path = Path(out_dir) / name
    atomic_write_bytes(path, yaml.safe_dump(json.loads(json.dumps(cfg, default=str)), sort_keys=False).encode())
    return path
