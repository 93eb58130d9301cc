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


def load_config(path: Optional[str] = None, sets: Iterable[str] = ()) -> Dict[str, Any]:
    """Defaults, then ``path`` (if given), then ``--set a.b=value`` overrides; unknown sections are refused."""
    cfg = _load_yaml(DEFAULT_CONFIG_PATH)
    if path:
        user = _load_yaml(Path(path))
        unknown = set(user) - set(cfg)
        if unknown:
            raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; known: {sorted(cfg)}")
        cfg = deep_merge(cfg, user)
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.split(".")
        node = cfg
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                raise ConfigError(f"--set {item!r}: no section {k!r}")
            node = node[k]
        node[keys[-1]] = _parse_value(raw)
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
