"""Resumable parallel chunks (target preparation): crashes redo only unfinished chunks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prn_blender.training.parallel import read_records, run_chunks

REPO = Path(__file__).resolve().parents[2]


def square_chunk(job: tuple[str, int, str, float]) -> dict[str, float]:
    """Toy chunk: writes `<id>.out` (value squared) after noting the attempt. Behaviour per
    job: "ok", "die-once" (the first attempt waits until c0 and c1 are recorded, then kills its
    own process with SIGKILL), "raise"."""
    chunk_id, value, folder, sleep_s = job
    out = Path(folder)
    with open(out / f"{chunk_id}.attempts", "a") as fh:
        fh.write("x")
    mode = (out / f"{chunk_id}.mode").read_text() if (out / f"{chunk_id}.mode").is_file() \
        else "ok"
    if mode == "die-once" and (out / f"{chunk_id}.attempts").read_text() == "x":
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
                (out / f"c{i}.done.json").is_file() for i in (0, 1)):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "raise":
        raise ValueError(f"bad input in {chunk_id}")
    time.sleep(sleep_s)
    tmp = out / f"{chunk_id}.out.tmp"
    tmp.write_text(str(value * value))
    os.replace(tmp, out / f"{chunk_id}.out")
    return {"faces": float(value), "chunks": 1.0}


def _jobs(folder: Path, n: int = 6, sleep_s: float = 0.0) -> list[tuple[str, tuple]]:
    return [(f"c{i}", (f"c{i}", i, str(folder), sleep_s)) for i in range(n)]


def _attempts(folder: Path, chunk_id: str) -> int:
    path = folder / f"{chunk_id}.attempts"
    return len(path.read_text()) if path.is_file() else 0


def test_all_chunks_run_once_and_a_rerun_does_nothing(tmp_path):
    run = run_chunks(_jobs(tmp_path), square_chunk, tmp_path, workers=2)
    assert sorted(run.ran) == [f"c{i}" for i in range(6)] and not run.missing
    assert run.totals() == {"faces": 15.0, "chunks": 6.0}
    assert [(tmp_path / f"c{i}.out").read_text() for i in range(6)] == \
        ["0", "1", "4", "9", "16", "25"]
    again = run_chunks(_jobs(tmp_path), square_chunk, tmp_path, workers=2)
    assert again.ran == [] and again.totals() == {"faces": 15.0, "chunks": 6.0}
    assert all(_attempts(tmp_path, f"c{i}") == 1 for i in range(6))


def test_a_killed_worker_s_chunk_is_redone_and_finished_chunks_are_not(tmp_path):
    (tmp_path / "c3.mode").write_text("die-once")
    run = run_chunks(_jobs(tmp_path), square_chunk, tmp_path, workers=2)
    assert run.pool_restarts >= 1
    assert not run.missing and run.totals() == {"faces": 15.0, "chunks": 6.0}
    assert _attempts(tmp_path, "c3") == 2
    assert (tmp_path / "c3.out").read_text() == "9"
    # Chunks recorded before the crash were not run again.
    for i in (0, 1):
        assert _attempts(tmp_path, f"c{i}") == 1


def test_a_chunk_that_raises_is_reported_and_retried_by_the_next_run(tmp_path):
    (tmp_path / "c2.mode").write_text("raise")
    run = run_chunks(_jobs(tmp_path), square_chunk, tmp_path, workers=2)
    assert run.missing == ["c2"] and "ValueError: bad input in c2" in run.failed["c2"]
    assert run.totals()["chunks"] == 5.0 and run.pool_restarts == 0
    (tmp_path / "c2.mode").unlink()
    again = run_chunks(_jobs(tmp_path), square_chunk, tmp_path, workers=2)
    assert again.ran == ["c2"] and not again.missing and again.totals()["faces"] == 15.0


def test_killing_the_whole_run_then_rerunning_completes_without_redoing_done_chunks(tmp_path):
    script = (
        "import sys; from pathlib import Path; "
        "from tests.training.test_parallel import _jobs, square_chunk; "
        "from prn_blender.training.parallel import run_chunks; "
        "out = Path(sys.argv[1]); run_chunks(_jobs(out, 12, 0.4), square_chunk, out, 2)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO,
                            start_new_session=True, stderr=subprocess.DEVNULL)
    ids = [f"c{i}" for i in range(12)]
    deadline = time.monotonic() + 60
    while len(read_records(tmp_path, ids)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-run
    proc.wait(timeout=30)
    done_before = read_records(tmp_path, ids)
    assert 3 <= len(done_before) < 12
    run = run_chunks(_jobs(tmp_path, 12), square_chunk, tmp_path, workers=2)
    assert not run.missing and run.totals()["chunks"] == 12.0
    assert set(run.ran).isdisjoint(done_before)
    for chunk_id in done_before:
        assert _attempts(tmp_path, chunk_id) == 1
    assert json.loads((tmp_path / "c5.done.json").read_text())["figures"] == \
        {"faces": 5.0, "chunks": 1.0}


def test_chunks_are_redone_under_other_settings_or_when_their_outputs_are_gone(tmp_path):
    def outputs_exist(chunk_id: str) -> bool:
        return (tmp_path / f"{chunk_id}.out").is_file()

    first = run_chunks(_jobs(tmp_path, 4), square_chunk, tmp_path, workers=2,
                       stamp={"weight": 10}, outputs_exist=outputs_exist)
    assert len(first.ran) == 4
    (tmp_path / "c1.out").unlink()
    (tmp_path / "c2.done.json").write_text('{"stamp": {"weight"')  # torn write
    again = run_chunks(_jobs(tmp_path, 4), square_chunk, tmp_path, workers=2,
                       stamp={"weight": 10}, outputs_exist=outputs_exist)
    assert sorted(again.ran) == ["c1", "c2"] and not again.missing
    assert [_attempts(tmp_path, f"c{i}") for i in range(4)] == [1, 2, 2, 1]
    other = run_chunks(_jobs(tmp_path, 4), square_chunk, tmp_path, workers=2,
                       stamp={"weight": 3}, outputs_exist=outputs_exist)
    assert len(other.ran) == 4
    assert read_records(tmp_path, ["c0"], {"weight": 10}) == {}
    assert read_records(tmp_path, ["c0"], {"weight": 3}) == {"c0": {"faces": 0.0, "chunks": 1.0}}


def test_duplicate_chunk_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        run_chunks([("a", 1), ("a", 2)], square_chunk, tmp_path)


def test_a_stamp_with_tuples_matches_its_own_records(tmp_path):
    """Records store the stamp as JSON (tuples become lists): it must still count as the
    same stamp, or every chunk would be redone (seen: all 30 target chunks run twice)."""
    stamp = {"passes": ((10.0, 1.0), (2.0, 0.05)), "name": "x"}
    run = run_chunks(_jobs(tmp_path, 3), square_chunk, tmp_path, workers=2, stamp=stamp)
    assert sorted(run.ran) == ["c0", "c1", "c2"] and run.pool_restarts == 0
    again = run_chunks(_jobs(tmp_path, 3), square_chunk, tmp_path, workers=2, stamp=stamp)
    assert again.ran == [] and sorted(again.done) == ["c0", "c1", "c2"]
    assert all(_attempts(tmp_path, f"c{i}") == 1 for i in range(3))
