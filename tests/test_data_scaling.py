"""benchmarks/data_scaling.py: VOCdevkit views with fewer images of one source, and the learning-curve report."""
import importlib.util
import json

import pytest

from benchmarks.data_scaling import gather, main, markdown, per_doubling, source_counts, summarise, write_subsets
from compress.voc import DataError, VOCDataset, read_split


def test_views_keep_nested_subsets_of_one_source(tmp_path, pedestrians) -> None:
    views = write_subsets(pedestrians, "trainval", "coco", [32, 64, 128], seed=0, out=tmp_path)
    assert [v.parent.name for v in views] == ["coco32", "coco64", "coco128"]
    orig = pedestrians / "VOC2007" / "ImageSets" / "Main"
    kept = {}
    for n, view in zip((32, 64, 128), views):
        counts = json.loads((view.parent / "subset.json").read_text())["counts"]
        assert counts["coco"]["images"] == n
        assert counts["mot15"] == {"images": 1058, "boxes": 8023}
        assert counts["pennfudan"] == {"images": 136, "boxes": 337}
        ids = read_split(view / "VOC2007", "trainval")
        kept[n] = {i for i in ids if i.startswith("coco_")}
        # the per-source and class lists follow the subset; the test split is untouched
        assert set(read_split(view / "VOC2007", "trainval_coco")) == kept[n]
        person = (view / "VOC2007" / "ImageSets" / "Main" / "person_trainval.txt").read_text().split("\n")
        assert {ln.split()[0] for ln in person if ln} == set(ids)  # "id  1/-1" lines of the kept images
        assert (view / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_bytes() == (orig / "test.txt").read_bytes()
        if n < 128:  # the source's other images, to evaluate on: together with the kept ones, the original list
            heldout = read_split(view / "VOC2007", "trainval_coco_heldout")
            assert len(heldout) == 128 - n and not set(heldout) & kept[n]
            assert sorted(heldout + sorted(kept[n])) == sorted(read_split(pedestrians / "VOC2007", "trainval_coco"))
        else:
            assert not (view / "VOC2007" / "ImageSets" / "Main" / "trainval_coco_heldout.txt").exists()
        # the ids keep their original order
        order = read_split(pedestrians / "VOC2007", "trainval")
        assert ids == [i for i in order if i in set(ids)]
    assert kept[32] < kept[64] < kept[128]
    again = write_subsets(pedestrians, "trainval", "coco", [32], seed=0, out=tmp_path)  # a view is rewritten
    assert set(read_split(again[0] / "VOC2007", "trainval_coco")) == kept[32]
    assert set(read_split(write_subsets(pedestrians, "trainval", "coco", [32], seed=1, out=tmp_path / "s1")[0]
                          / "VOC2007", "trainval_coco")) != kept[32]
    assert json.loads((views[0].parent / "subset.json").read_text())["counts"]["coco"]["boxes"] == 66
    # keeping every image reproduces every split file of the original, byte for byte
    for f in orig.glob("*.txt"):
        assert (views[2] / "VOC2007" / "ImageSets" / "Main" / f.name).read_bytes() == f.read_bytes()
    assert len(list((views[2] / "VOC2007" / "ImageSets" / "Main").glob("*.txt"))) == len(list(orig.glob("*.txt")))
    # a view reads like any VOCdevkit (annotations and images through the links)
    ds = VOCDataset(views[0], "trainval")
    assert len(ds) == 1058 + 136 + 32 and ds.num_boxes() == 8023 + 337 + 66
    assert source_counts(views[0], "trainval")["coco"] == {"images": 32, "boxes": 66}


def test_views_refuse_impossible_requests(tmp_path, pedestrians, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["split", "--data", str(pedestrians), "--source", "coco", "--keep", "200", "--out", str(tmp_path)])
    assert "--keep [200]: source 'coco' has 128 images in split 'trainval'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--keep \[129\]: source 'coco' has 128 images in split 'trainval'"):
        write_subsets(pedestrians, "trainval", "coco", [32, 129], seed=0, out=tmp_path)
    with pytest.raises(DataError,
                       match=r"trainval\.txt.*no image of source 'kitti' \(sources: coco, mot15, pennfudan\)"):
        write_subsets(pedestrians, "trainval", "kitti", [1], seed=0, out=tmp_path)
    assert not list(tmp_path.iterdir())
    (tmp_path / "coco8" / "VOCdevkit" / "VOC2007").mkdir(parents=True)  # not a view of ours: kept, and refused
    with pytest.raises(FileExistsError, match=r"coco8/VOCdevkit/VOC2007 exists and is not a view written by"):
        write_subsets(pedestrians, "trainval", "coco", [8], seed=0, out=tmp_path)
    assert (tmp_path / "coco8" / "VOCdevkit" / "VOC2007").is_dir()


def _report(path, results):
    rows = lambda overall, coco: [{"source": "all", "range": "all", "ap50": overall},  # noqa: E731
                                  {"source": "coco", "range": "all", "ap50": coco}]
    path.write_text(json.dumps({"results": [{"checkpoint": n, "split": "test", "rows": rows(o, c)}
                                            for n, o, c in results]}))
    return str(path)


def test_report_means_and_slope_per_doubling(tmp_path, capsys) -> None:
    a = _report(tmp_path / "a.json", [("s0.pt", 0.62, 0.30), ("s1.pt", 0.60, 0.32)])
    b = _report(tmp_path / "b.json", [("c32.pt", 0.58, 0.20)])
    rows = gather([("128", a, "s0.pt"), ("128", a, "s1.pt"), ("32", b, "c32.pt")])
    assert [(r["train_images"], r["checkpoint"]) for r in rows] == [(32, "c32.pt"), (128, "s0.pt"), (128, "s1.pt")]
    s = summarise(rows)
    assert [(m["train_images"], m["runs"]) for m in s["per_n"]] == [(32, 1), (128, 2)]
    assert s["per_n"][1]["ap50_mean"]["coco"] == pytest.approx(0.31)
    assert s["per_n"][1]["ap50_spread"]["coco"] == pytest.approx(0.02)
    assert s["per_n"][0]["ap50_spread"]["coco"] is None
    # least squares through (log2 32, 20), (7, 30), (7, 32): the line through (5, 20) and (7, 31), 11 / 2 per doubling
    assert s["points_per_doubling"]["coco"] == pytest.approx(5.5)
    assert s["points_per_doubling"]["overall"] == pytest.approx(1.5)
    assert s["points_per_doubling"]["mot15"] is None  # no figures
    assert per_doubling(rows[1:], "coco") is None  # one N only
    assert s["steps"] == [{"from": 32, "to": 128, "points_per_doubling": pytest.approx(
        {"overall": 1.5, "coco": 5.5, "mot15": None, "pennfudan": None})}]  # (31 - 20) / 2, (61 - 58) / 2
    c = _report(tmp_path / "c.json", [("c64.pt", 0.60, 0.29)])
    bent = summarise(rows + gather([("64", c, "c64.pt")]))
    assert [(st["from"], st["to"]) for st in bent["steps"]] == [(32, 64), (64, 128)]
    assert bent["steps"][0]["points_per_doubling"]["coco"] == pytest.approx(9.0)  # 29 - 20 in one doubling
    assert bent["steps"][1]["points_per_doubling"]["coco"] == pytest.approx(2.0)  # 31 - 29
    assert bent["steps"][1]["points_per_doubling"]["overall"] == pytest.approx(1.0)  # 61 - 60
    assert "- 32 → 64: overall 2.00, coco 9.00, mot15 –, pennfudan –" in markdown("coco", rows, bent)

    main(["report", "--source", "coco", "--point", "128", a, "s0.pt", "--point", "128", a, "s1.pt",
          "--point", "32", b, "c32.pt", "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "data_scaling.md").read_text()
    assert "| 128 | 2 | 0.6100 (0.0200) | 0.3100 (0.0200) | – | – |" in md
    assert "coco 5.50" in md
    assert json.loads((tmp_path / "out" / "data_scaling.json").read_text())["points_per_doubling"]["coco"] == \
        pytest.approx(5.5)
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "out" / "data_scaling.png").read_bytes()[:4] == b"\x89PNG"

    with pytest.raises(SystemExit):
        main(["report", "--source", "coco", "--point", "64", a, "nope.pt", "--out", str(tmp_path / "bad")])
    assert "a.json: no checkpoint 'nope.pt' evaluated on the 'test' split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--source", "coco", "--point", "many", a, "s0.pt", "--out", str(tmp_path / "bad")])
    assert "'many' is not a positive number of training images" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"'0' is not a positive number of training images"):
        gather([("0", a, "s0.pt")])
    assert not (tmp_path / "bad").exists()
