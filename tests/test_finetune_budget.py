"""benchmarks/finetune_budget.py on hand-made prune_compare results: filtering, per-seed means, the gap, twins."""
import json

import pytest

from benchmarks.finetune_budget import FINE_STREAMS, collect, summarise


def _result(path, epochs, seed, aps, **extra):
    rows = [{"method": "baseline", "target": 0.0, "ap50_after": 0.60, "flops": 2e9}]
    rows += [{"method": m, "target": t, "ap50_after": ap, "flops": 2e9 * (1 - t)} for (m, t), ap in aps.items()]
    path.write_text(json.dumps({"round_to": 16, "finetune_epochs": epochs, "finetune_seed": seed, "rows": rows,
                                **extra}))
    return path


def test_means_per_seed_and_gap(tmp_path):
    files = [
        _result(tmp_path / "a.json", 4, 0, {("richness+comp", 0.5): 0.58, ("torch-pruning", 0.5): 0.55}),
        _result(tmp_path / "b.json", 4, 1, {("richness+comp", 0.5): 0.56, ("torch-pruning", 0.5): 0.54}),
        _result(tmp_path / "c.json", 16, 0, {("torch-pruning", 0.7): 0.57}),
        # Not comparable: distillation, another learning rate, another rounding.
        _result(tmp_path / "d.json", 4, 2, {("richness+comp", 0.5): 0.99}, distill_weight=1.0),
        _result(tmp_path / "e.json", 4, 3, {("richness+comp", 0.5): 0.99}, finetune_lr=0.0005),
        _result(tmp_path / "f.json", 4, 4, {("richness+comp", 0.5): 0.99}, round_to=8),
        # Not comparable: structural options of our allocation.
        _result(tmp_path / "g.json", 4, 5, {("richness+comp", 0.5): 0.99}, keep_whole=["backbone.features.2.conv.2"]),
        _result(tmp_path / "h.json", 4, 6, {("richness+comp", 0.5): 0.99}, min_channels=32),
        # Not comparable: another fine-tune schedule (a warm-up, another EMA decay, a --set override).
        _result(tmp_path / "w.json", 4, 8, {("torch-pruning", 0.5): 0.99}, finetune_warmup_epochs=1.0),
        _result(tmp_path / "x.json", 4, 9, {("torch-pruning", 0.5): 0.99}, ema_decay=0.999),
        _result(tmp_path / "y.json", 4, 10, {("torch-pruning", 0.5): 0.99}, overrides=["train.batch_size=8"]),
        # Comparable: the options recorded at their defaults.
        _result(tmp_path / "i.json", 4, 7, {("richness+comp", 0.7): 0.50}, keep_whole=[], min_channels=16,
                finetune_warmup_epochs=0.0, ema_decay=0.9995, overrides=[]),
        # The fine streams kept whole: a run-wide --keep-whole (cut to TP's -68.3%) or the '+streams' method.
        _result(tmp_path / "j.json", 16, 0, {("richness+comp", 0.6832): 0.58}, keep_whole=FINE_STREAMS),
        _result(tmp_path / "k.json", 16, 1, {("richness+comp+streams", 0.6832): 0.60}),
    ]
    records = collect(files, 16)
    assert len(records) == 8 and {r["file"] for r in records} == {str(f) for f in files[:3] + files[-3:]}
    rows = summarise(records)
    assert [(r["target"], r["epochs"]) for r in rows] == [(0.5, 4), (0.7, 4), (0.7, 16)]
    del rows[1]
    assert rows[0]["richness+comp"]["mean"] == pytest.approx(0.57)
    assert rows[0]["torch-pruning"]["per_seed"] == {0: 0.55, 1: 0.54}
    assert rows[0]["ours_minus_tp"] == pytest.approx(0.57 - 0.545)
    assert rows[0]["torch-pruning"]["gflops"] == [1.0] and rows[1]["torch-pruning"]["gflops"] == [0.6]
    assert rows[1]["richness+comp"]["mean"] is None and "ours_minus_tp" not in rows[1]
    streams = [r for r in records if r["method"] == "richness+comp+streams"]
    assert [(r["target"], r["target_exact"], r["seed"]) for r in streams] == [(0.7, 0.6832, 0), (0.7, 0.6832, 1)]
    assert rows[1]["richness+comp+streams"]["mean"] == pytest.approx(0.59)
    assert rows[1]["streams_minus_tp"] == pytest.approx(0.59 - 0.57)


def test_the_same_run_twice_is_refused(tmp_path):
    a = _result(tmp_path / "a.json", 4, 0, {("richness+comp", 0.5): 0.58})
    b = _result(tmp_path / "b.json", 4, 0, {("richness+comp", 0.5): 0.57})
    with pytest.raises(ValueError, match="a.json"):
        collect([a, b], 16)


def test_drop_by_path_and_method(tmp_path):
    (tmp_path / "old").mkdir()
    old = _result(tmp_path / "old" / "r.json", 8, 0, {("richness+comp", 0.5): 0.59, ("torch-pruning", 0.5): 0.58})
    new = _result(tmp_path / "new.json", 8, 0, {("torch-pruning", 0.5): 0.57})
    with pytest.raises(ValueError, match="give each run once"):
        collect([old, new], 16)
    records = collect([old, new], 16, drop=["old/r.json:torch-pruning"])
    assert sorted((r["method"], r["ap50"], r["file"]) for r in records) == [
        ("richness+comp", 0.59, str(old)), ("torch-pruning", 0.57, str(new))]
    assert [r["file"] for r in collect([old, new], 16, drop=["old/"])] == [str(new)]
    # METHOD is matched after relabelling: a '+streams' row is dropped by its own name only.
    s = _result(tmp_path / "s.json", 8, 0, {("richness+comp", 0.6832): 0.6}, keep_whole=FINE_STREAMS)
    assert collect([s], 16, drop=["s.json:richness+comp"])[0]["method"] == "richness+comp+streams"
    assert collect([s], 16, drop=["s.json:richness+comp+streams"]) == []
    with pytest.raises(ValueError, match="'l2' is not one of"):
        collect([s], 16, drop=["s.json:l2"])
    with pytest.raises(ValueError, match="no result file's path contains 'nowhere'"):
        collect([s], 16, drop=["nowhere"])


def test_torch_pruning_with_the_streams_is_its_own_column(tmp_path):
    """The fairness check: ours + streams against Torch-Pruning with the same streams kept whole, a third gap."""
    files = [
        _result(tmp_path / "a.json", 2, 0, {("richness+comp+streams", 0.5): 0.585, ("torch-pruning", 0.5): 0.566}),
        _result(tmp_path / "b.json", 2, 0, {("torch-pruning+streams", 0.5): 0.575}),
        _result(tmp_path / "c.json", 2, 1, {("torch-pruning+streams", 0.5): 0.579}),
    ]
    rows = summarise(collect(files, 16))
    assert len(rows) == 1
    assert rows[0]["torch-pruning+streams"]["per_seed"] == {0: 0.575, 1: 0.579}
    assert rows[0]["torch-pruning"]["per_seed"] == {0: 0.566}
    assert rows[0]["streams_minus_tp"] == pytest.approx(0.585 - 0.566)
    assert rows[0]["streams_minus_tp_streams"] == pytest.approx(0.585 - 0.577)
    assert "ours_minus_tp" not in rows[0]


def test_warmup_selects_its_own_runs_and_group_l1_has_its_gap(tmp_path):
    """``--warmup 1`` tabulates only runs fine-tuned with a one-epoch warm-up; group-l1's gap is against TP."""
    files = [
        _result(tmp_path / "a.json", 8, 0, {("richness+comp+streams+gl1", 0.5): 0.600}, finetune_warmup_epochs=1.0),
        _result(tmp_path / "b.json", 8, 0, {("torch-pruning", 0.5): 0.580}, finetune_warmup_epochs=1.0),
        _result(tmp_path / "c.json", 8, 1, {("torch-pruning", 0.5): 0.590}, finetune_warmup_epochs=1.0),
        _result(tmp_path / "d.json", 8, 1, {("richness+comp+streams+gl1", 0.5): 0.500}),  # no warm-up
        _result(tmp_path / "e.json", 8, 2, {("torch-pruning", 0.5): 0.500}, finetune_warmup_epochs=2.0),
    ]
    records = collect(files, 16, warmup=1.0)
    assert sorted(r["file"] for r in records) == [str(f) for f in files[:3]]
    (row,) = summarise(records)
    assert row["torch-pruning"]["per_seed"] == {0: 0.580, 1: 0.590}
    assert row["gl1_minus_tp"] == pytest.approx(0.600 - 0.585)
    assert [r["file"] for r in collect(files, 16)] == [str(files[3])]
