"""Resumable parallel work over fixed chunks, for target preparation (DESIGN.md section 2).

The manifest is the output folder itself: a chunk is done when its record `<chunk id>.done.json`
exists, parses, carries the run's `stamp` (the settings the outputs depend on) and, if the
caller gives `outputs_exist`, its outputs are still there. A worker writes its outputs first
(atomically, tmp + os.replace) and the record last, so a chunk is either complete or redone;
it is never half-counted. The driver:

- skips chunks that are done (a re-run after any crash resumes where it stopped; a re-run with
  other settings redoes everything);
- runs the rest in a `ProcessPoolExecutor`; when a worker process dies (OOM kill, segfault,
  kill -9) the pool breaks, and the chunks without a record are simply submitted again to a
  fresh pool, up to `retries` times. Chunks that finished before the crash are not redone,
  so nothing is lost or done twice;
- a chunk that raises an ordinary exception is reported with its message and left undone
  (re-running the command retries it), the others go on.

`multiprocessing.Pool` is not used on purpose: when one of its workers is killed, the task it
held is lost and `imap` waits forever.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

ChunkFn = Callable[[Any], dict[str, float]]
"""Does one chunk (any picklable job) and returns its summary figures (JSON numbers)."""


def record_path(out_dir: Path, chunk_id: str) -> Path:
    return Path(out_dir) / f"{chunk_id}.done.json"


def write_record(out_dir: Path, chunk_id: str, figures: dict[str, float],
                 stamp: dict[str, Any] | None = None) -> None:
    """Mark a chunk done (atomically, flushed to disk). Call after its outputs are in place."""
    path = record_path(out_dir, chunk_id)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps({"stamp": stamp or {}, "figures": figures}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_records(out_dir: Path, chunk_ids: Sequence[str], stamp: dict[str, Any] | None = None,
                 outputs_exist: Callable[[str], bool] | None = None,
                 ) -> dict[str, dict[str, float]]:
    """{chunk: figures} of the chunks that are done (see the module docstring); a record that
    does not parse (a crash mid-write on a file system without ordering) counts as not done."""
    done = {}
    for chunk_id in chunk_ids:
        path = record_path(out_dir, chunk_id)
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("stamp") != (stamp or {}):
            continue
        if outputs_exist is not None and not outputs_exist(chunk_id):
            continue
        done[chunk_id] = record.get("figures", {})
    return done


@dataclass
class ChunkRun:
    """What a `run_chunks` call did."""

    done: dict[str, dict[str, float]] = field(default_factory=dict)
    """Records of every chunk that is done now (earlier runs included)."""
    ran: list[str] = field(default_factory=list)
    """Chunks this call completed, in completion order."""
    failed: dict[str, str] = field(default_factory=dict)
    """Chunk -> error message for chunks that raised."""
    missing: list[str] = field(default_factory=list)
    """Chunks still not done (failed, or retries exhausted): re-run the command."""
    pool_restarts: int = 0
    """How many times a dead worker broke the pool and the rest was resubmitted."""

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for figures in self.done.values():
            for key, value in figures.items():
                out[key] = out.get(key, 0.0) + value
        return out


def _run_and_record(fn: ChunkFn, chunk_id: str, job: Any, out_dir: str,
                    stamp: dict[str, Any]) -> dict[str, float]:
    figures = fn(job)
    write_record(Path(out_dir), chunk_id, figures, stamp)
    return figures


def run_chunks(
    jobs: Sequence[tuple[str, Any]],
    fn: ChunkFn,
    out_dir: Path,
    workers: int = 2,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    retries: int = 3,
    desc: str = "chunks",
    stamp: dict[str, Any] | None = None,
    outputs_exist: Callable[[str], bool] | None = None,
) -> ChunkRun:
    """Run `fn(job)` for every (chunk id, job) that is not done, in `workers` processes (fork
    start method: workers inherit the parent's imports and globals). `stamp`: JSON-able
    settings the outputs depend on; `outputs_exist(chunk_id)`: whether a chunk's outputs are
    still on disk. See the module docstring."""
    # As records store it: JSON turns tuples into lists, and a stamp that never equals its
    # own records would redo every chunk forever.
    stamp = json.loads(json.dumps(stamp or {}))

    def is_done(chunk_id: str) -> bool:
        return bool(read_records(out_dir, [chunk_id], stamp, outputs_exist))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [chunk_id for chunk_id, _ in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError("chunk ids must be unique")
    result = ChunkRun()
    bar = tqdm(total=len(jobs), desc=desc,
               initial=len(read_records(out_dir, ids, stamp, outputs_exist)))
    for attempt in range(retries + 1):
        todo = [(c, j) for c, j in jobs if c not in result.failed and not is_done(c)]
        if not todo:
            break
        if attempt:
            result.pool_restarts += 1
            bar.write(f"a worker process died (or its initialiser failed): redoing the "
                      f"{len(todo)} unfinished chunk(s) (restart {attempt} of {retries})")
        try:
            with ProcessPoolExecutor(workers, mp.get_context("fork"), initializer,
                                     initargs) as pool:
                pending = {pool.submit(_run_and_record, fn, c, j, str(out_dir), stamp): c
                           for c, j in todo}
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        chunk_id = pending.pop(future)
                        error = future.exception()
                        if isinstance(error, BrokenProcessPool):
                            raise error
                        if error is not None:
                            result.failed[chunk_id] = f"{type(error).__name__}: {error}"
                            bar.write(f"chunk {chunk_id} failed: {result.failed[chunk_id]}")
                        else:
                            result.ran.append(chunk_id)
                            bar.update(1)
        except BrokenProcessPool:
            continue
        break  # every chunk was attempted without a pool failure
    bar.close()
    result.done = read_records(out_dir, ids, stamp, outputs_exist)
    result.missing = [c for c in ids if c not in result.done]
    return result
