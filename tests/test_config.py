"""Run configuration: YAML defaults, user YAML, --set overrides, explicit flags, the saved resolved copy."""
from __future__ import annotations

import pytest
import yaml

from jetson_compress.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    deep_merge,
    load_config,
    override,
    save_resolved,
)


def test_defaults_come_from_default_yaml():
    assert DEFAULT_CONFIG_PATH.name == "default.yaml" and DEFAULT_CONFIG_PATH.parent.name == "configs"
    cfg = load_config()
    assert cfg == yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    assert sorted(cfg) == ["build", "data", "eval", "model", "nms", "train"]
    assert cfg["data"]["classes"] == ["person"]
    assert cfg["model"]["input_size"] == 320 and cfg["model"]["width_mult"] == 1.0
    assert cfg["train"]["epochs"] == 40 and cfg["train"]["batch_size"] == 16
    assert cfg["train"]["scale_range"] == [0.5, 1.5]
    assert cfg["eval"]["nms_iou"] == 0.6


def test_user_yaml_overrides_one_key(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  epochs: 3\n")
    cfg = load_config(str(user))
    expected = load_config()
    expected["train"]["epochs"] = 3
    assert cfg == expected
    assert cfg["train"]["batch_size"] == 16 and cfg["train"]["lr"] == 0.002  # siblings kept


def test_empty_user_yaml_is_the_defaults(tmp_path):
    user = tmp_path / "empty.yaml"
    user.write_text("# nothing\n")
    assert load_config(str(user)) == load_config()


def test_unknown_section_names_the_file(tmp_path):
    user = tmp_path / "bad.yaml"
    user.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(user))
    msg = str(info.value)
    assert str(user) in msg and "trian" in msg and "unknown section" in msg


def test_invalid_yaml_names_the_file(tmp_path):
    user = tmp_path / "broken.yaml"
    user.write_text("train: [1, 2\n  epochs: : 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(user))
    assert str(user) in str(info.value) and "not valid YAML" in str(info.value)


def test_non_mapping_and_missing_file(tmp_path):
    user = tmp_path / "list.yaml"
    user.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(user))
    assert str(user) in str(info.value)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing))
    assert str(missing) in str(info.value) and "not found" in str(info.value)


def test_set_overrides_are_typed():
    cfg = load_config(sets=["train.epochs=3", "model.width_mult=0.35", "train.scale_range=[0.25, 2]",
                            "data.classes=[person, car]", "train.jitter=false", "model.imagenet_weights=/w.pth",
                            "train.threads=null"])
    assert cfg["train"]["epochs"] == 3 and type(cfg["train"]["epochs"]) is int
    assert cfg["model"]["width_mult"] == 0.35 and type(cfg["model"]["width_mult"]) is float
    assert cfg["train"]["scale_range"] == [0.25, 2]
    assert cfg["data"]["classes"] == ["person", "car"]
    assert cfg["train"]["jitter"] is False
    assert cfg["model"]["imagenet_weights"] == "/w.pth"
    assert cfg["train"]["threads"] is None
    assert cfg["train"]["batch_size"] == 16  # untouched


def test_set_applies_after_user_yaml(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  epochs: 3\n  batch_size: 4\n")
    cfg = load_config(str(user), ["train.epochs=5"])
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["batch_size"] == 4


def test_set_errors():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(sets=["train.epochs"])
    with pytest.raises(ConfigError, match="no section 'nosuch'"):
        load_config(sets=["nosuch.key=1"])


def test_override_ignores_none():
    cfg = load_config()
    override(cfg, "train.epochs", None)
    assert cfg["train"]["epochs"] == 40
    override(cfg, "train.epochs", 2)
    assert cfg["train"]["epochs"] == 2
    override(cfg, "data.root", "/data/VOCdevkit")
    assert cfg["data"]["root"] == "/data/VOCdevkit"
    override(cfg, "new.section.key", 0)  # falsy but not None: applied
    assert cfg["new"] == {"section": {"key": 0}}


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1, "c": [1]}, "d": 2}
    merged = deep_merge(base, {"a": {"b": 5}})
    assert merged == {"a": {"b": 5, "c": [1]}, "d": 2}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 2}
    merged["a"]["c"].append(2)
    assert base["a"]["c"] == [1]


def test_save_resolved_round_trip(tmp_path):
    cfg = load_config(sets=["train.epochs=3", "train.scale_range=[0.25, 2]"])
    path = save_resolved(cfg, tmp_path)
    assert path == tmp_path / "config.resolved.yaml"
    assert yaml.safe_load(path.read_text()) == cfg
    # Tuples (set programmatically) come back as lists; key order is kept.
    cfg["train"]["scale_range"] = (0.5, 1.5)
    path = save_resolved(cfg, tmp_path, "other.yaml")
    loaded = yaml.safe_load(path.read_text())
    assert loaded["train"]["scale_range"] == [0.5, 1.5]
    assert list(loaded) == ["data", "model", "train", "eval", "nms", "build"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.resolved.yaml", "other.yaml"]
