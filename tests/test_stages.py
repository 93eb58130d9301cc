"""The build's stage runner: atomic outputs, skip when up to date, re-run on changed inputs, failures harmless."""
from __future__ import annotations

import json

import pytest

from jetson_compress.stages import RECORD, StageError, StageRunner


def _writer(text, calls):
    def fn(work):
        calls.append(text)
        (work / "out.txt").write_text(text)
        return {"note": text}
    return fn


def test_skip_rerun_and_failure_keeps_old_artefacts(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text("a")
    calls = []
    runner = StageRunner(tmp_path / "run", log=lambda s: None)
    rec = runner.run("s1", {"input": src}, {"k": 1}, _writer("v1", calls))
    out = tmp_path / "run" / "s1" / "out.txt"
    assert out.read_text() == "v1" and rec["skipped"] is False and calls == ["v1"]
    saved = json.loads((tmp_path / "run" / "s1" / RECORD).read_text())
    assert saved["settings"] == {"k": 1} and set(saved["outputs"]) == {"out.txt"} and saved["note"] == "v1"
    # Same inputs and settings: skipped, fn not called.
    rec = runner.run("s1", {"input": src}, {"k": 1}, _writer("v2", calls))
    assert rec["skipped"] is True and calls == ["v1"] and out.read_text() == "v1"
    # Changed settings or changed input: re-run.
    runner.run("s1", {"input": src}, {"k": 2}, _writer("v2", calls))
    assert out.read_text() == "v2"
    src.write_text("b")
    runner.run("s1", {"input": src}, {"k": 2}, _writer("v3", calls))
    assert out.read_text() == "v3" and calls == ["v1", "v2", "v3"]
    # Tampered output: not up to date any more.
    out.write_text("tampered")
    runner.run("s1", {"input": src}, {"k": 2}, _writer("v4", calls))
    assert out.read_text() == "v4"

    # A failing stage leaves the previous complete output and no partial folder.
    def boom(work):
        (work / "out.txt").write_text("half")
        raise ValueError("disk on fire")
    with pytest.raises(StageError, match="stage s1 failed: disk on fire"):
        runner.run("s1", {"input": src}, {"k": 3}, boom)
    assert out.read_text() == "v4"
    assert not (tmp_path / "run" / ".s1.partial").exists()
    # An interrupted stage (Ctrl-C) likewise.
    def interrupted(work):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        runner.run("s1", {"input": src}, {"k": 3}, interrupted)
    assert out.read_text() == "v4"


def test_missing_input_named(tmp_path):
    runner = StageRunner(tmp_path / "run", log=lambda s: None)
    with pytest.raises(StageError, match="input ckpt"):
        runner.run("s", {"ckpt": tmp_path / "nope.pt"}, {}, lambda w: None)


def test_progress_shows_the_eta_of_the_stages_left(tmp_path):
    lines = []
    runner = StageRunner(tmp_path / "run", log=lines.append)
    runner.plan(["a", "b", "c"], {"a": 100.0, "b": 20.0, "c": 5.0})
    runner.run("a", {}, {}, lambda work: None)
    assert lines[0].startswith("[1/3] a (elapsed 0 s, ETA 2 min)")  # 125 s left before a starts
    runner.run("b", {}, {}, lambda work: None)
    assert "[2/3] b (elapsed" in lines[2] and lines[2].endswith("ETA 25 s) ...")
    # A second run's ETA uses the first run's recorded durations (here ~0 s), not the defaults.
    again = StageRunner(tmp_path / "run", log=lines.append, force=True)
    again.plan(["a", "b", "c"], {"a": 100.0, "b": 20.0, "c": 5.0})
    again.run("a", {}, {}, lambda work: None)
    assert lines[-2].endswith("ETA 5 s) ...")  # a and b took ~0 s last time; c has no record yet
