"""Distributed training: real 2-process gloo runs under torch.distributed.run (torchrun)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from prn_blender.core.layout import load_layout
from prn_blender.net.prnet import PRNet
from prn_blender.training.augment import AugmentSettings
from prn_blender.training.dataset import ResumableBatchSampler, ShardSamples, epoch_order
from prn_blender.training.distributed import (
    DistributedContext,
    NormalizedOutput,
    SyncBatchNormUnavailableError,
)
from prn_blender.training.loss import weighted_loss_from_normalized
from prn_blender.training.train import load_checkpoint
from tests.training.synthetic_shards import synthetic_layout, write_synthetic_shards

REPO = Path(__file__).resolve().parents[2]
SEED, LR, WIDTH, BATCH, WORLD, FACES, STEPS = 3, 1e-3, 16, 2, 2, 8, 3  # width: see test_train


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    layout = synthetic_layout(64)
    layout.save(root / "layout.npz")
    write_synthetic_shards(root / "shards", layout, faces=FACES, faces_per_shard=3)
    return root / "shards", root / "layout.npz"


def _torchrun(data, out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    shards, layout = data
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={WORLD}", "-m", "prn_blender.training", "train",
           "--shards", str(shards), "--layout", str(layout), "--out", str(out),
           "--width", str(WIDTH), "--batch", str(BATCH), "--lr", str(LR), "--seed", str(SEED),
           "--num-workers", "0", "--no-bf16", "--threads", "1", "--no-eval", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_rank_slices_are_disjoint_and_resume_with_another_world_size_continues_the_order():
    n, seed = 23, 5
    slices = [list(ResumableBatchSampler(n, 3, seed, 2, 0, rank, 2)) for rank in range(2)]
    first_global = [k for k in slices[0][0] + slices[1][0]]
    assert first_global == [(2, int(i)) for i in epoch_order(n, seed, 2)[:6]]
    seen = [k for rank in slices for batch in rank for k in batch]
    assert len(seen) == len(set(seen)) == 18  # 3 global batches of 6; the last 5 dropped
    # 1 process resuming at global position 12 takes exactly the samples 2 ranks would next
    resumed = next(iter(ResumableBatchSampler(n, 6, seed, 2, 12, 0, 1)))
    assert resumed == [(2, int(i)) for i in epoch_order(n, seed, 2)[12:18]]


def test_a_sampler_over_several_epochs_is_the_per_epoch_samplers_one_after_another():
    """The trainer keeps one DataLoader for the whole run: its sampler continues from a
    mid-epoch start into the following epochs exactly as one sampler per epoch would."""
    n, seed = 23, 4
    for rank in range(2):
        joined = list(ResumableBatchSampler(n, 3, seed, 5, 12, rank, 2, end_epoch=8))
        parts = [b for e, start in ((5, 12), (6, 0), (7, 0))
                 for b in ResumableBatchSampler(n, 3, seed, e, start, rank, 2)]
        assert joined == parts and len(joined) == len(ResumableBatchSampler(
            n, 3, seed, 5, 12, rank, 2, end_epoch=8)) == 1 + 3 + 3
        assert [b[0][0] for b in joined] == [5] + [6] * 3 + [7] * 3


def test_sync_bn_is_refused_on_cpu_with_a_clear_message():
    with pytest.raises(SyncBatchNormUnavailableError, match="needs CUDA"):
        DistributedContext.from_env("cpu", sync_bn=True)


def _reference_run(data) -> dict[str, torch.Tensor]:
    """One process, same samples: per step, a forward/backward per rank micro-batch (BatchNorm
    statistics per micro-batch, as per-rank BN under DDP), gradients averaged, one Adam step."""
    shards, layout_path = data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (--threads 1): BatchNorm on a random network
    torch.manual_seed(SEED)   # amplifies even the rounding differences of other thread counts
    model = PRNet(width=WIDTH).to(memory_format=torch.channels_last)
    net = NormalizedOutput(model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    dataset = ShardSamples(shards, load_layout(layout_path), SEED, AugmentSettings())
    collate = torch.utils.data.default_collate
    step, epoch = 0, 0
    while step < STEPS:
        samplers = [iter(ResumableBatchSampler(FACES, BATCH, SEED, epoch, 0, r, WORLD))
                    for r in range(WORLD)]
        for micro_batches in zip(*samplers, strict=True):
            optimizer.zero_grad()
            for keys in micro_batches:
                image, target, weights = collate([dataset[k] for k in keys])
                image = image.contiguous(memory_format=torch.channels_last)
                loss = weighted_loss_from_normalized(net(image), target, weights)
                (loss / WORLD).backward()
            optimizer.step()
            step += 1
            if step == STEPS:
                break
        epoch += 1
    torch.set_num_threads(threads)
    return {k: v.detach() for k, v in model.named_parameters()}


def test_two_gloo_ranks_train_like_one_process_accumulating_their_micro_batches(data, tmp_path):
    proc = _torchrun(data, tmp_path / "ddp", "--max-steps", str(STEPS))
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output
    assert "2 process(es)" in output and "effective batch 4" in output
    assert not (tmp_path / "ddp" / "rank1").exists()
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert (state["step"], state["epoch"], state["position"], state["world_size"]) == \
        (STEPS, 1, 4, 2)  # 8 faces / global batch 4 = 2 steps per epoch
    reference = _reference_run(data)
    torch.manual_seed(SEED)
    initial = {k: v.detach() for k, v in PRNet(width=WIDTH).named_parameters()}
    moved = max(float((reference[k] - initial[k]).abs().max()) for k in reference)
    worst = max(float((state["model"][k] - reference[k]).abs().max()) for k in reference)
    print(f"DDP vs accumulated single process: max |diff| {worst:.2e} (params moved {moved:.2e})")
    assert moved > 1e-3
    assert worst < 1e-5  # float rounding of the all-reduce, through 3 Adam steps
    # The 2-rank checkpoint resumes in 1 process (same effective batch) where the ranks stopped.
    shards, layout = data
    resumed = subprocess.run(
        [sys.executable, "-m", "prn_blender.training", "train", "--shards", str(shards),
         "--layout", str(layout), "--out", str(tmp_path / "ddp"), "--resume",
         "--width", str(WIDTH), "--batch", str(WORLD * BATCH), "--lr", str(LR),
         "--seed", str(SEED), "--num-workers", "0", "--no-bf16", "--threads", "1",
         "--no-eval", "--max-steps", str(STEPS + 1)],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming at step {STEPS}" in resumed.stdout + resumed.stderr
    after = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert (after["step"], after["epoch"], after["position"], after["world_size"]) == \
        (STEPS + 1, 2, 0, 1)
    # It went on from the ranks' weights and Adam state: one more Adam step (|update| <= about
    # 3.2 lr per value), not a fresh start.
    adam_steps = {int(v["step"]) for v in after["optimizer"]["state"].values()}
    assert adam_steps == {STEPS + 1}
    step_size = max(float((after["model"][k] - state["model"][k]).abs().max()) for k in reference)
    assert 0 < step_size <= 3.5 * LR


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_nodes_with_c10d_rendezvous_train_like_two_local_ranks(data, tmp_path):
    """Multi-node path on one machine: two launchers (--nnodes=2, one rank each) meet through
    the c10d rendezvous, as two SLURM nodes would; weights equal the accumulated reference."""
    shards, layout = data
    endpoint = f"127.0.0.1:{_free_port()}"
    run_id = uuid.uuid4().hex[:8]
    launchers = []
    for _node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
               "--nproc_per_node=1", f"--rdzv-id={run_id}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint={endpoint}", "-m", "prn_blender.training", "train",
               "--shards", str(shards), "--layout", str(layout), "--out", str(tmp_path / "mn"),
               "--width", str(WIDTH), "--batch", str(BATCH), "--lr", str(LR),
               "--seed", str(SEED), "--num-workers", "0", "--no-bf16", "--threads", "1",
               "--no-eval", "--max-steps", str(STEPS)]
        launchers.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = []
    for proc in launchers:
        try:
            outputs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for other in launchers:
                other.kill()
            pytest.fail("the two-node rendezvous did not finish in 240 s")
    assert [p.returncode for p in launchers] == [0, 0], "\n".join(outputs)
    assert "2 process(es)" in "".join(outputs)
    state = load_checkpoint(tmp_path / "mn" / "last.pt")
    assert (state["step"], state["world_size"]) == (STEPS, 2)
    reference = _reference_run(data)
    worst = max(float((state["model"][k] - reference[k]).abs().max()) for k in reference)
    assert worst < 1e-5


def _rank_pids(tag: str, rank: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PRN_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            pids.append(int(entry.name))
    return pids


def test_killed_rank_makes_the_launcher_fail_within_the_timeout(data, tmp_path):
    tag = uuid.uuid4().hex
    out = tmp_path / "ddp"
    proc = _torchrun(data, out, "--max-steps", "100000", "--dist-timeout-s", "20",
                     env={"PRN_TEST_TAG": tag})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        log = out / "log.csv"
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[0]
    victims = [p for p in _rank_pids(tag, 1) if p != proc.pid]
    assert victims, "rank 1 not found"
    killed = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the launcher still runs 60 s after a rank was killed")
    elapsed = time.monotonic() - killed
    print(f"launcher exited {proc.returncode} {elapsed:.1f} s after rank 1 was killed")
    assert proc.returncode != 0
    assert elapsed < 60
    assert np.all([not _rank_pids(tag, r) for r in (0, 1)])  # no orphan rank left behind
