"""Resumable parallel work over fixed chunks, for target preparation (DESIGN.md section 2).

The manifest is the output folder itself: a chunk is done when its record `<chunk id>.done.json`
exists. A worker writes its outputs first (atomically, tmp + os.replace) and the record last,
so a chunk is either complete or redone; it is never half-counted. The driver:

- skips chunks whose record exists (a re-run after any crash resumes where it stopped);
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


def write_record(out_dir: Path, chunk_id: str, figures: dict[str, float]) -> None:
    """Mark a chunk done (atomically). Call after its outputs are in place."""
    path = record_path(out_dir, chunk_id)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(figures) + "\n")
    os.replace(tmp, path)


def read_records(out_dir: Path, chunk_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """The records of those chunks that are done."""
    done = {}
    for chunk_id in chunk_ids:
        path = record_path(out_dir, chunk_id)
        if path.is_file():
            done[chunk_id] = json.loads(path.read_text())
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


def _run_and_record(fn: ChunkFn, chunk_id: str, job: Any, out_dir: str) -> dict[str, float]:
    figures = fn(job)
    write_record(Path(out_dir), chunk_id, figures)
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
) -> ChunkRun:
    """Run `fn(job)` for every (chunk id, job) without a done record, in `workers` processes
    (fork start method: workers inherit the parent's imports). See the module docstring."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [chunk_id for chunk_id, _ in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError("chunk ids must be unique")
    result = ChunkRun()
    bar = tqdm(total=len(jobs), desc=desc, initial=len(read_records(out_dir, ids)))
    for attempt in range(retries + 1):
        todo = [(c, j) for c, j in jobs
                if c not in result.failed and not record_path(out_dir, c).is_file()]
        if not todo:
            break
        if attempt:
            result.pool_restarts += 1
            bar.write(f"a worker process died: redoing its {len(todo)} unfinished chunk(s) "
                      f"(restart {attempt} of {retries})")
        try:
            with ProcessPoolExecutor(workers, mp.get_context("fork"), initializer,
                                     initargs) as pool:
                pending = {pool.submit(_run_and_record, fn, c, j, str(out_dir)): c
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
    bar.close()
    result.done = read_records(out_dir, ids)
    result.missing = [c for c in ids if c not in result.done]
    return result
