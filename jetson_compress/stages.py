"""Stage runner of ``jetson-compress build``: atomic, recorded, skippable, resumable stages.

A stage reads files and writes files into ``<run>/<stage>/``. It works in a temporary folder
``<run>/.<stage>.partial`` and is renamed into place only when it succeeded, so an interrupted or failed stage never
damages the artefacts of an earlier successful run of it (or of earlier stages). Each stage leaves a sidecar
``stage.json``: the sha256 of its inputs, its settings, the code version, its outputs' sha256 and its wall time.
On a re-run a stage whose inputs' hashes and settings are unchanged and whose outputs are intact is skipped.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from jetson_compress.version import __version__

RECORD = "stage.json"


class StageError(RuntimeError):
    """A stage failed; the message names the stage and the cause. Earlier artefacts are intact."""


def sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _canonical(settings: Mapping[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


class StageRunner:
    def __init__(self, run_dir: Path, log: Callable[[str], None] = print, force: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.force = force
        self.records: Dict[str, Dict[str, Any]] = {}
        self.t0 = time.perf_counter()
        self._planned: List[str] = []
        self._estimates: Dict[str, float] = {}

    def plan(self, names: List[str], estimates: Optional[Mapping[str, float]] = None) -> None:
        """The stages to come, in order, and a rough duration of each (seconds) for the ETA."""
        self._planned = list(names)
        self._estimates = dict(estimates or {})

    def _eta(self, name: str) -> Optional[float]:
        """Seconds left: the estimates of this stage and the ones after it, less what this stage has run.

        A previous run's record of a stage (its ``stage.json``) is a better estimate than the default."""
        if name not in self._planned or not self._estimates:
            return None
        left = 0.0
        for stage in self._planned[self._planned.index(name):]:
            if stage in self.records:
                continue
            rec_path = self.run_dir / stage / RECORD
            guess = self._estimates.get(stage, 0.0)
            try:
                guess = float(json.loads(rec_path.read_text()).get("seconds", guess))
            except (OSError, ValueError, TypeError, AttributeError):
                pass
            left += guess
        return left

    def _progress(self, name: str) -> str:
        if name in self._planned:
            i = self._planned.index(name) + 1
            elapsed = time.perf_counter() - self.t0
            eta = self._eta(name)
            tail = f", ETA {eta / 60:.0f} min" if eta is not None and eta >= 60 else \
                (f", ETA {eta:.0f} s" if eta is not None else "")
            return f"[{i}/{len(self._planned)}] {name} (elapsed {elapsed:.0f} s{tail})"
        return name

    def up_to_date(self, name: str, inputs: Mapping[str, Path], settings: Mapping[str, Any]) -> Optional[Dict]:
        rec_path = self.run_dir / name / RECORD
        if self.force or not rec_path.is_file():
            return None
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON: not up to date, run the stage again
            return None
        if not isinstance(rec, dict):
            return None
        if rec.get("code_version") != __version__ or rec.get("settings") != json.loads(_canonical(settings)):
            return None
        if rec.get("inputs") != {k: sha256_path(Path(p)) for k, p in inputs.items()}:
            return None
        for rel, digest in rec.get("outputs", {}).items():
            p = self.run_dir / name / rel
            if not p.is_file() or sha256_path(p) != digest:
                return None
        return rec

    def run(self, name: str, inputs: Mapping[str, Path], settings: Mapping[str, Any],
            fn: Callable[[Path], Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        """Run ``fn(work_dir)`` unless up to date; returns the stage record (with ``dir``)."""
        for key, p in inputs.items():
            if not Path(p).is_file():
                raise StageError(f"stage {name}: input {key} ({p}) does not exist")
        final = self.run_dir / name
        rec = self.up_to_date(name, inputs, settings)
        if rec is not None:
            self.log(f"{self._progress(name)}: up to date, skipped")
            rec["skipped"] = True
            rec["dir"] = str(final)
            self.records[name] = rec
            return rec
        self.log(f"{self._progress(name)} ...")
        work = self.run_dir / f".{name}.partial"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        t = time.perf_counter()
        try:
            extra = fn(work) or {}
        except KeyboardInterrupt:
            shutil.rmtree(work, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise StageError(f"stage {name} failed: {exc}") from exc
        outputs = {str(p.relative_to(work)): sha256_path(p) for p in sorted(work.rglob("*"))
                   if p.is_file() and p.name != RECORD}
        rec = {"stage": name, "code_version": __version__, "settings": json.loads(_canonical(settings)),
               "inputs": {k: sha256_path(Path(p)) for k, p in inputs.items()},
               "input_paths": {k: str(p) for k, p in inputs.items()}, "outputs": outputs,
               "seconds": time.perf_counter() - t, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        (work / RECORD).write_text(json.dumps(rec, indent=2, default=str))
        # Swap in atomically: the old folder is removed only once the new one is complete.
        old = self.run_dir / f".{name}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            final.rename(old)
        work.rename(final)
        if old.exists():
            shutil.rmtree(old)
        self.log(f"{self._progress(name)}: done in {rec['seconds']:.1f} s")
        rec["skipped"] = False
        rec["dir"] = str(final)
        self.records[name] = rec
        return rec
