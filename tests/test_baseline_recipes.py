"""benchmarks/baseline_recipes.py: collecting per-source AP50 of every checkpoint from accuracy_by_size reports."""
import importlib.util
import json

import pytest

from benchmarks.baseline_recipes import collect, main


def _report(path, results):
    def res(name, split, overall, coco, size=None):
        rows = [{"source": "all", "range": "all", "ap50": overall}, {"source": "all", "range": ">=16", "ap50": 0.9},
                {"source": "coco", "range": "all", "ap50": coco}]
        return {"checkpoint": name, "split": split, "rows": rows, **({} if size is None else {"input_size": size})}

    path.write_text(json.dumps({"results": [res(*r) for r in results]}))
    return path


def test_collect_merges_aliases_and_sorts(tmp_path) -> None:
    a = _report(tmp_path / "a.json", [("ship.pt", "test", 0.6036636942955753, 0.25),
                                      ("ship.pt", "trainval", 0.81, 0.7), ("b.pt", "test", 0.62, 0.31)])
    # the same weights under another name, evaluated with another thread count (a difference past 6 digits)
    b = _report(tmp_path / "b.json", [("shipped_frozen4.pt", "test", 0.6036636942955801, 0.25),
                                      ("c.pt", "test", 0.5896, None)])
    entries = collect([a, b])
    assert [e["name"] for e in entries] == ["b.pt", "ship.pt", "c.pt"]
    ship = entries[1]
    assert ship["aliases"] == ["shipped_frozen4.pt"] and ship["report"] == str(a)
    # the first report's figures, unrounded (rounded once, in the table)
    assert ship["ap50"] == {"overall": 0.6036636942955753, "coco": 0.25, "mot15": None, "pennfudan": None}
    assert entries[2]["ap50"]["coco"] is None
    assert [e["name"] for e in collect([a], split="trainval")] == ["ship.pt"]


def test_one_name_with_two_sets_of_figures_is_refused(tmp_path) -> None:
    a = _report(tmp_path / "a.json", [("x.pt", "test", 0.60, 0.25)])
    b = _report(tmp_path / "b.json", [("x.pt", "test", 0.61, 0.25)])
    with pytest.raises(ValueError, match=r"b\.json: checkpoint 'x\.pt' has other figures than in .*a\.json"):
        collect([a, b])


def test_main_writes_table_and_plot(tmp_path, capsys) -> None:
    a = _report(tmp_path / "a.json", [("ship.pt", "test", 0.6037, 0.2555, 320), ("wide.pt", "test", 0.6150, 0.3000),
                                      ("big.pt", "test", 0.6394, 0.3087, 416)])
    report = main([str(a), "--out", str(tmp_path / "out")])
    assert [e["name"] for e in report["checkpoints"]] == ["big.pt", "wide.pt", "ship.pt"]
    assert [e["input_size"] for e in report["checkpoints"]] == [416, None, 320]
    md = (tmp_path / "out" / "baseline_recipes.md").read_text()
    assert "| `big.pt` | 416 | 0.6394 | 0.3087 | – | – |" in md and "| `wide.pt` | – | 0.6150 | 0.3000 | – | – |" in md
    assert "| 300 | 0.641 | 0.420 | 0.798 | 0.961 |" in md
    # rounded once: 0.31555037 is 0.3156 (rounding to 6 digits first would give 0.31555 and then 0.3155)
    b = _report(tmp_path / "b.json", [("cp.pt", "test", 0.6250448513277576, 0.3155503722915754)])
    main([str(b), "--out", str(tmp_path / "out2")])
    assert "| `cp.pt` | – | 0.6250 | 0.3156 | – | – |" in (tmp_path / "out2" / "baseline_recipes.md").read_text()
    if importlib.util.find_spec("matplotlib"):  # without it the table is still written, the plot left out
        assert (tmp_path / "out" / "baseline_recipes.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "bad")])
    assert "missing.json: not an accuracy_by_size report" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    (tmp_path / "other.json").write_text(json.dumps({"results": [{"checkpoint": "x.pt", "split": "test"}]}))
    with pytest.raises(ValueError, match=r"other\.json: not an accuracy_by_size report \(KeyError: 'rows'\)"):
        collect([tmp_path / "other.json"])
