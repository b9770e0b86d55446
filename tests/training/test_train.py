"""Trainer: loss values, a real (tiny) run that learns, exact resume after a stop or SIGKILL,
export, evaluation hook, bf16 vs fp32 on the real network."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from prn_blender.net.prnet import PRNet
from prn_blender.training.__main__ import COMMANDS
from prn_blender.training.loss import batch_landmark_nme, weighted_position_loss
from prn_blender.training.train import (
    TrainConfig,
    checkpoint_weights,
    export_checkpoint,
    load_checkpoint,
    train,
)
from tests.training.synthetic_shards import synthetic_layout, write_synthetic_shards

REPO = Path(__file__).resolve().parents[2]
WIDTH = 16
"""The paper's width. Not a narrower test network: torch 2.13's CPU Conv2d(8, 16, 1, stride 2)
backward in channels_last segfaults on 64 px inputs on AVX-512 machines (width 8's first
shortcut), and the real width's shapes are what users run."""
TINY = {"batch": 2, "width": WIDTH, "num_workers": 0, "bf16": False, "threads": 1,
        "checkpoint_minutes": 60.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """(shards folder, layout file): 8 synthetic faces on a 64 x 64 layout."""
    root = tmp_path_factory.mktemp("data")
    layout = synthetic_layout(64)
    layout_path = root / "layout.npz"
    layout.save(layout_path)
    write_synthetic_shards(root / "shards", layout, faces=8, faces_per_shard=5)
    return root / "shards", layout_path


def _config(data, out: Path, **overrides) -> TrainConfig:
    shards, layout = data
    return TrainConfig(shards=shards, out=out, layout=layout, **{**TINY, **overrides})


def _log(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv") as fh:
        return list(csv.DictReader(fh))


def _wait_for_steps(proc: subprocess.Popen, run: Path, steps: int) -> None:
    """Until the training subprocess has logged `steps` steps; it must still be running."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "log.csv").is_file() and len(_log(run)) >= steps:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def test_loss_is_weighted_mean_squared_error_over_256_px():
    target = torch.rand(2, 3, 8, 8) * 200
    pred = target.clone()
    pred[:, 0] += 2.56  # every texel 2.56 px off in x
    weights = torch.rand(2, 8, 8) * 16
    assert float(weighted_position_loss(pred, target, weights)) == pytest.approx(1e-4, rel=1e-4)
    weights[1] = 0
    pred[1] += 1000  # zero weight: ignored
    assert float(weighted_position_loss(pred, target, weights)) == pytest.approx(1e-4, rel=1e-4)


def test_gradient_loss_sees_ripples_not_offsets():
    from prn_blender.training.loss import weighted_gradient_loss

    target = torch.rand(2, 3, 8, 8) * 200
    weights = torch.full((2, 8, 8), 3.0)
    shifted = target + 5.0  # a constant offset: no gradient error
    assert float(weighted_gradient_loss(shifted, target, weights)) == pytest.approx(0, abs=1e-9)
    _, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    ripple = target.clone()
    ripple[:, 2] += 1.28 * (-1.0) ** cols  # +-1.28 px along u: neighbours differ by 2.56 px
    # u pairs: (2.56 / 256)^2 = 1e-4 each; v pairs: none.
    assert float(weighted_gradient_loss(ripple, target, weights)) == pytest.approx(1e-4,
                                                                                   rel=1e-4)
    assert float(weighted_position_loss(ripple, target, weights)) == pytest.approx(2.5e-5,
                                                                                   rel=1e-4)
    # A pair with one zero-weight texel does not count, whatever its values.
    weights[:, :, 0] = 0
    ripple[:, :, :, 0] += 1000
    assert float(weighted_gradient_loss(ripple, target, weights)) == pytest.approx(1e-4,
                                                                                   rel=1e-4)


def test_gradient_loss_weight_adds_to_the_logged_loss(data, tmp_path):
    train(_config(data, tmp_path / "paper", max_steps=1))
    train(_config(data, tmp_path / "grad", max_steps=1, gradient_loss_weight=50.0))
    paper, grad = (float(_log(tmp_path / name)[0]["loss"]) for name in ("paper", "grad"))
    assert grad > paper * 1.01  # same initial weights and batch: only the extra term differs


def test_batch_landmark_nme_is_shift_over_sqrt_box_area():
    r = 32
    ys, xs = torch.meshgrid(torch.arange(r, dtype=torch.float32),
                            torch.arange(r, dtype=torch.float32), indexing="ij")
    target = torch.stack([xs * 4, ys * 2, torch.zeros_like(xs)])[None]  # x = 4 col, y = 2 row
    texels = torch.tensor([[2.0, 3.0], [20.0, 3.0], [2.0, 23.0], [20.5, 23.5]])
    pred = target.clone()
    pred[:, 0] += 6.0
    weights = torch.ones(1, r, r)
    # box of the target landmarks: w = 4 * 18.5 = 74, h = 2 * 20.5 = 41
    nme = batch_landmark_nme(pred, target, weights, texels)
    assert nme == pytest.approx(6.0 / np.sqrt(74 * 41), rel=1e-4)


def test_cli_has_a_subcommand_registry_with_train_and_export():
    assert {"train", "export", "targets", "eval"} <= COMMANDS.keys()


def test_tiny_training_run_lowers_the_loss_and_writes_log_and_plot(data, tmp_path):
    config = _config(data, tmp_path / "run", lr=2e-3, max_steps=40, augment=False)
    train(config)
    rows = _log(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    losses = np.array([float(r["loss"]) for r in rows])
    assert losses[-8:].mean() < 0.3 * losses[:4].mean()
    assert float(rows[-1]["epoch"]) == pytest.approx(10.0)  # 8 faces, batch 2, 40 steps
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (state["step"], state["epoch"], state["position"]) == (40, 10, 0)


def test_stop_and_resume_equals_uninterrupted_run(data, tmp_path):
    whole = _config(data, tmp_path / "whole", max_steps=6, lr=1e-3)
    train(whole)
    part = replace(whole, out=tmp_path / "part", max_steps=3)  # stops mid-epoch 1 (4 steps/epoch)
    train(part)
    assert load_checkpoint(tmp_path / "part" / "last.pt")["position"] == 6
    with pytest.raises(FileExistsError, match="--resume"):
        train(replace(part, max_steps=6))
    train(replace(part, max_steps=6, resume=True))
    _assert_same_weights(_weights(tmp_path / "whole" / "last.pt"),
                         _weights(tmp_path / "part" / "last.pt"))
    _assert_same_weights(load_checkpoint(tmp_path / "whole" / "last.pt")["ema"],
                         load_checkpoint(tmp_path / "part" / "last.pt")["ema"])
    assert [r["loss"] for r in _log(tmp_path / "whole")] == \
        [r["loss"] for r in _log(tmp_path / "part")]


def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(data, tmp_path):
    shards, layout = data
    steps = 30
    args = [sys.executable, "-m", "prn_blender.training", "train", "--shards", str(shards),
            "--layout", str(layout), "--width", str(WIDTH), "--batch", "2", "--num-workers", "0",
            "--no-bf16", "--threads", "1", "--no-eval", "--checkpoint-minutes", "0",
            "--max-steps", str(steps), "--lr", "1e-3"]
    run = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(run)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_steps(proc, run, 5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(run / "last.pt")["step"]
    assert 0 < killed_at < steps
    subprocess.run([*args, "--out", str(run), "--resume"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train(_config(data, tmp_path / "whole", max_steps=steps, lr=1e-3, checkpoint_minutes=0.0))
    _assert_same_weights(_weights(run / "last.pt"), _weights(tmp_path / "whole" / "last.pt"))
    _assert_same_weights(load_checkpoint(run / "last.pt")["ema"],
                         load_checkpoint(tmp_path / "whole" / "last.pt")["ema"])
    assert [int(r["step"]) for r in _log(run)] == list(range(1, steps + 1))


def test_evaluate_hook_results_go_to_eval_csv(data, tmp_path):
    calls = []

    def evaluate(model):
        calls.append(model.training)
        # The hook sees the weight average, just saved in the checkpoint (after step 2 it
        # differs from the raw weights).
        checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
        _assert_same_weights(dict(model.state_dict()), checkpoint_weights(checkpoint))
        raw = checkpoint["model"]
        differs = any(not torch.equal(v, raw[k]) for k, v in model.state_dict().items()
                      if v.is_floating_point())
        assert differs == (checkpoint["step"] > 1)
        model.eval()
        return {"dev_nme": 12.5, "other": 1.0}

    train(_config(data, tmp_path / "run", max_steps=3, eval_minutes=0.0, ema_decay=0.5,
                  lr=1e-3), evaluate)
    with open(tmp_path / "run" / "eval.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(calls) == 2  # after steps 1 and 2; step 3 is the last step
    assert rows[0]["step"] == "1" and float(rows[0]["dev_nme"]) == 12.5
    assert not list((tmp_path / "run").glob("step*.pt"))  # only with keep_evaluated


def test_keep_evaluated_keeps_each_scored_checkpoint_as_it_was(data, tmp_path):
    run = tmp_path / "run"
    scored: list[dict[str, torch.Tensor]] = []

    def evaluate(model):
        scored.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"dev_nme": 1.0}

    train(_config(data, run, max_steps=3, eval_minutes=0.0, ema_decay=0.5, lr=1e-3,
                  keep_evaluated=True), evaluate)
    assert sorted(p.name for p in run.glob("step*.pt")) == ["step1.pt", "step2.pt"]
    for step, weights in zip((1, 2), scored, strict=True):
        kept = load_checkpoint(run / f"step{step}.pt")
        assert kept["step"] == step
        # What the evaluation scored, not what last.pt became after it was replaced.
        _assert_same_weights(weights, checkpoint_weights(kept))
    last = load_checkpoint(run / "last.pt")
    assert last["step"] == 3
    first = checkpoint_weights(load_checkpoint(run / "step1.pt"))
    assert any(not torch.equal(v, first[k]) for k, v in checkpoint_weights(last).items()
               if v.is_floating_point())


def test_export_writes_safetensors_with_layout_id_and_checkpoint_weights(data, tmp_path):
    from prn_blender.net.weights import load_weights

    train(_config(data, tmp_path / "run", max_steps=3, lr=1e-3, ema_decay=0.5))
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    for ema, name in ((True, "avg"), (False, "raw")):
        out = export_checkpoint(tmp_path / "run" / "last.pt", tmp_path / f"{name}.safetensors",
                                dev_nme="x", ema=ema)
        state, info = load_weights(out, expected_layout_id="synthetic64")
        assert info.trained and info.dev_nme == "x" and "3 steps" in info.training
        assert ("weight average (decay 0.5)" in info.training) == ema
        saved = checkpoint_weights(checkpoint, ema)
        assert state.keys() == saved.keys()
        for key, value in saved.items():  # fp16 on disk: about 3 significant digits
            torch.testing.assert_close(state[key], value.to(state[key].dtype), atol=1e-3,
                                       rtol=1e-3, msg=key)


def test_weight_average_follows_the_training_weights_with_the_given_decay(data, tmp_path):
    """EMA after 2 steps: w0 = weights after step 1 (copied), then d * w0 + (1 - d) * w2 with
    the warmed-up d = min(decay, 2 / 11). Checked against the raw weights of a run stopped
    and resumed between the steps; a new resolution restarts the average."""
    from prn_blender.training.train import ema_decay_at

    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.999, 10**6) == 0.999
    one = _config(data, tmp_path / "run", max_steps=1, lr=1e-3, ema_decay=0.1)
    train(one)
    after1 = _weights(tmp_path / "run" / "last.pt")
    assert set(load_checkpoint(tmp_path / "run" / "last.pt")["ema"]) >= {"n_averaged"}
    train(replace(one, max_steps=2, resume=True))
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    after2, average = checkpoint["model"], checkpoint_weights(checkpoint)
    key = "input_conv.weight" if "input_conv.weight" in after2 else next(iter(after2))
    assert not torch.equal(after1[key], after2[key])
    d = ema_decay_at(0.1, 1)
    assert d == 0.1
    for k, value in after2.items():
        if value.is_floating_point():
            torch.testing.assert_close(average[k], d * after1[k] + (1 - d) * value,
                                       atol=1e-6, rtol=1e-5, msg=k)
    train(replace(one, max_steps=3, resume=True, resolution=32))  # a new stage
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    _assert_same_weights(checkpoint_weights(checkpoint), checkpoint["model"])
    off = replace(one, out=tmp_path / "off", ema_decay=0.0)
    train(off)
    assert "ema" not in load_checkpoint(tmp_path / "off" / "last.pt")
    with pytest.raises(ValueError, match="ema-decay"):
        train(replace(one, out=tmp_path / "bad", ema_decay=1.0))


def test_init_from_checkpoint_starts_from_its_weight_average(data, tmp_path):
    train(_config(data, tmp_path / "a", max_steps=3, lr=1e-3, ema_decay=0.5))
    train(_config(data, tmp_path / "b", max_steps=1, init_from=tmp_path / "a" / "last.pt",
                  lr=0.0))
    checkpoint = load_checkpoint(tmp_path / "a" / "last.pt")
    a, raw = checkpoint_weights(checkpoint), checkpoint["model"]
    b = _weights(tmp_path / "b" / "last.pt")
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    _assert_same_weights({k: a[k] for k in params}, {k: b[k] for k in params})
    assert any(not torch.equal(a[k], raw[k]) for k in params)


def test_bf16_autocast_loss_is_close_to_fp32_and_a_bf16_step_trains(data, tmp_path):
    """Numeric sanity of bf16 autocast on the training loss (fp32 master weights). On trained
    weights the position maps differ by about 0.5 px mean (docs/TRAINING.md); a random
    network amplifies rounding, so only the batch loss is compared here."""
    from prn_blender.core.layout import load_layout
    from prn_blender.training.augment import NO_AUGMENTATION
    from prn_blender.training.dataset import ShardSamples
    from prn_blender.training.loss import weighted_loss_from_normalized

    shards, layout = data
    dataset = ShardSamples(shards, load_layout(layout), 0, NO_AUGMENTATION)
    image, target, weights = torch.utils.data.default_collate([dataset[(0, i)] for i in range(4)])
    torch.manual_seed(0)
    model = PRNet(width=WIDTH).train()
    with torch.no_grad():
        fp32 = weighted_loss_from_normalized(model.forward_normalized(image), target, weights)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = weighted_loss_from_normalized(model.forward_normalized(image), target,
                                                 weights)
    assert float(bf16) == pytest.approx(float(fp32), rel=0.05)
    train(_config(data, tmp_path / "run", max_steps=2, bf16=True))
    losses = [float(r["loss"]) for r in _log(tmp_path / "run")]
    assert len(losses) == 2 and np.isfinite(losses).all()


def test_downsample_sample_averages_valid_texels_only():
    from prn_blender.training.dataset import downsample_sample

    crop = np.zeros((4, 4, 3), np.uint8)
    crop[:2, :2] = 200
    target = np.full((4, 4, 3), 1e6, np.float32)  # junk where invalid
    weights = np.zeros((4, 4), np.float32)
    target[0, 0], weights[0, 0] = (10.0, 20.0, 30.0), 16.0
    target[1, 1], weights[1, 1] = (12.0, 22.0, 32.0), 4.0
    target[2:, 2:], weights[2:, 2:] = (5.0, 6.0, 7.0), 3.0
    small, small_target, small_weights = downsample_sample(crop, target, weights, 2)
    assert small.shape == (2, 2, 3) and small[0, 0, 0] == 200 and small[1, 1, 0] == 0
    np.testing.assert_allclose(small_target[0, 0], (11.0, 21.0, 31.0))
    np.testing.assert_allclose(small_target[1, 1], (5.0, 6.0, 7.0))
    np.testing.assert_allclose(small_weights, [[5.0, 0.0], [0.0, 3.0]])
    # Positions stay in full-resolution crop pixels (the network's output is position/side).
    with pytest.raises(ValueError, match="must divide"):
        downsample_sample(crop, target, weights, 3)


def test_half_resolution_stage_trains_and_its_weights_run_at_full_resolution(data, tmp_path):
    config = _config(data, tmp_path / "run", lr=2e-3, max_steps=40, augment=False,
                     resolution=32)
    train(config)
    losses = np.array([float(r["loss"]) for r in _log(tmp_path / "run")])
    assert losses[-8:].mean() < 0.3 * losses[:4].mean()
    model = PRNet(width=WIDTH)
    model.load_state_dict(_weights(tmp_path / "run" / "last.pt"))
    with torch.inference_mode():
        assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    # Exported, the weights say they run at 32 px; `predict_at` downsamples the full-size crop
    # by area averaging and upsamples the map bilinearly.
    from prn_blender.net.prnet import predict_at
    from prn_blender.net.weights import load_weights

    out = export_checkpoint(tmp_path / "run" / "last.pt", tmp_path / "w.safetensors")
    state, info = load_weights(out, synthetic_layout(64).layout_id)
    assert info.input_size == 32
    model.load_state_dict(state)
    crop = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        small = model(torch.nn.functional.avg_pool2d(crop, 2))
        full = predict_at(model, crop, info.input_size)
    assert full.shape == (1, 3, 64, 64)
    # bilinear x2 upsampling (align_corners False): texel (1, 1) = 9/16 (0,0) + 3/16 (0,1) +
    # 3/16 (1,0) + 1/16 (1,1) of the small map
    expected = (9 * small[0, :, 0, 0] + 3 * small[0, :, 0, 1] + 3 * small[0, :, 1, 0]
                + small[0, :, 1, 1]) / 16
    torch.testing.assert_close(full[0, :, 1, 1], expected, rtol=1e-5, atol=1e-4)


def test_mirror_augmentation_is_validated(data, tmp_path):
    """Mirroring needs a mirror-symmetric layout (the shipped ICT one is, test_augment checks
    the samples); the synthetic test layout has no surface to check, so it is refused."""
    with pytest.raises(ValueError, match="mirror-symmetric"):
        train(_config(data, tmp_path / "a", max_steps=1, mirror_probability=0.5))
    with pytest.raises(ValueError, match="mirror-probability"):
        train(_config(data, tmp_path / "b", max_steps=1, mirror_probability=1.5))
    with pytest.raises(ValueError, match="no-augment"):
        train(_config(data, tmp_path / "c", max_steps=1, mirror_probability=0.5, augment=False))


def test_eval_csv_keeps_old_columns_when_new_ones_appear(tmp_path):
    from prn_blender.training.train import _append_csv

    path = tmp_path / "eval.csv"
    _append_csv(path, ["step", "300w_nme", "300w_nme@128"], [1, 60.5, 4.9])
    _append_csv(path, ["step", "300w_nme@128"], [2, 4.8])
    _append_csv(path, ["step", "300w_nme@128", "aflw_nme@128"], [3, 4.7, 8.8])
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "300w_nme", "300w_nme@128", "aflw_nme@128"]
    assert [r["300w_nme@128"] for r in rows] == ["4.9", "4.8", "4.7"]
    assert [r["300w_nme"] for r in rows] == ["60.5", "", ""]
    assert [r["aflw_nme@128"] for r in rows] == ["", "", "8.8"]


def test_cached_canvas_fill_gives_the_same_samples(data):
    """ShardSamples keeps each face's canvas-filled storage image after the first use; a
    sample drawn again (cache hit), or by an unpickled copy (empty cache, as in a spawned
    DataLoader worker), is the same bytes as the first draw."""
    import pickle

    from prn_blender.core.layout import load_layout
    from prn_blender.training.augment import AugmentSettings
    from prn_blender.training.dataset import ShardSamples

    shards, layout = data
    dataset = ShardSamples(shards, load_layout(layout), 0, AugmentSettings(), 32)
    first = [dataset[(3, i)] for i in range(4)]
    assert len(dataset._content) == 4
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._content == {}
    for again in ([dataset[(3, i)] for i in range(4)], [copy[(3, i)] for i in range(4)]):
        for a, b in zip(first, again, strict=True):
            for x, y in zip(a, b, strict=True):
                assert torch.equal(x, y)


def test_yaw_repeats_count_per_abs_yaw_bin_and_unknown_yaw_once():
    from prn_blender.training.dataset import yaw_repeats

    yaw = np.array([np.nan, 10, -45, 75, -120, 29.9, 60, -30], np.float32)
    assert yaw_repeats(yaw, (1, 2, 3)).tolist() == [1, 1, 2, 3, 3, 1, 3, 2]
    assert yaw_repeats(yaw, (1, 1, 1)).tolist() == [1] * 8
    for bad in ((1, 2), (0, 1, 1), (1, -2, 3)):
        with pytest.raises(ValueError, match="0-30, 30-60, 60"):
            yaw_repeats(yaw, bad)


def test_repeated_faces_are_the_same_face_with_their_own_augmentation(data):
    """Sample k of an oversampled epoch is face face_of[k]: without augmentation exactly that
    face's sample; with augmentation each appearance is drawn with its own seed."""
    from prn_blender.core.layout import load_layout
    from prn_blender.training.augment import NO_AUGMENTATION, AugmentSettings
    from prn_blender.training.dataset import ShardSamples

    shards, layout = data
    layout = load_layout(layout)
    repeats = np.array([1, 3, 1, 1, 2, 1, 1, 2])
    plain = ShardSamples(shards, layout, 0, NO_AUGMENTATION)
    repeated = ShardSamples(shards, layout, 0, NO_AUGMENTATION, repeats=repeats)
    assert len(plain) == 8 and len(repeated) == 12
    assert repeated.face_of.tolist() == [0, 1, 1, 1, 2, 3, 4, 4, 5, 6, 7, 7]
    for k, face in ((0, 0), (3, 1), (7, 4), (11, 7)):
        for x, y in zip(repeated[(2, k)], plain[(2, face)], strict=True):
            assert torch.equal(x, y)
    augmented = ShardSamples(shards, layout, 0, AugmentSettings(), repeats=repeats)
    assert not torch.equal(augmented[(2, 1)][0], augmented[(2, 2)][0])
    with pytest.raises(ValueError, match="one repeat count"):
        ShardSamples(shards, layout, 0, NO_AUGMENTATION, repeats=repeats[:5])


def test_yaw_repeats_run_trains_and_resumes_only_with_the_same_repeats(data, tmp_path):
    import json

    from prn_blender.training.dataset import yaw_repeats
    from prn_blender.training.shards import ShardDataset

    shards, _ = data
    expected = int(yaw_repeats(ShardDataset(shards).yaw_deg, (1, 2, 3)).sum())
    assert expected > 8  # the synthetic faces' yaws span -60..60 degrees
    run = tmp_path / "run"
    train(_config(data, run, max_steps=2, yaw_repeats=(1, 2, 3)))
    info = json.loads((run / "config.json").read_text())
    assert info["faces"] == 8 and info["samples_per_epoch"] == expected
    with pytest.raises(ValueError, match="--yaw-repeats 1,2,3"):
        train(_config(data, run, max_steps=3, resume=True))
    train(_config(data, run, max_steps=3, resume=True, yaw_repeats=(1, 2, 3)))
    assert [int(r["step"]) for r in _log(run)] == [1, 2, 3]
    epoch = float(_log(run)[-1]["epoch"])
    assert epoch == pytest.approx(3 * 2 / expected, abs=1e-4)


# ------------------------------------------------------------ the command line around a run
def _cli_args(data, run: Path, *extra: str) -> list[str]:
    shards, layout = data
    return ["train", "--shards", str(shards), "--layout", str(layout), "--width", str(WIDTH),
            "--batch", "2", "--num-workers", "0", "--no-bf16", "--threads", "1", "--no-eval",
            "--out", str(run), *extra]


def test_a_bare_resume_keeps_the_runs_recipe_and_max_steps_is_the_last_step(
        data, tmp_path, capsys):
    from prn_blender.training.__main__ import main

    run = tmp_path / "run"
    assert main(_cli_args(data, run, "--lr", "3e-4", "--halve-every-epochs", "7",
                          "--gradient-loss-weight", "0.5", "--seed", "3",
                          "--ema-decay", "0.9", "--max-steps", "2")) == 0
    assert main(_cli_args(data, run, "--resume", "--max-steps", "4")) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["lr"], config["halve_every_epochs"], config["gradient_loss_weight"],
            config["seed"], config["ema_decay"]) == ("0.0003", "7.0", "0.5", "3", "0.9")
    out = capsys.readouterr().out
    assert "with its recipe (" in out and "lr 0.0003" in out and "changed here" not in out
    assert [int(r["step"]) for r in _log(run)] == [1, 2, 3, 4]
    # At --max-steps already: nothing more (it took one step per re-run before).
    assert main(_cli_args(data, run, "--resume", "--max-steps", "4")) == 0
    assert [int(r["step"]) for r in _log(run)] == [1, 2, 3, 4]
    # An option given again wins, and is named.
    assert main(_cli_args(data, run, "--resume", "--max-steps", "5", "--lr", "1e-4")) == 0
    assert json.loads((run / "config.json").read_text())["lr"] == "0.0001"
    assert "changed here: lr 0.0003 -> 0.0001" in capsys.readouterr().out


def test_a_process_group_sigterm_with_loader_workers_still_checkpoints(data, tmp_path):
    """torchrun and SLURM stop a job by signalling its whole process group, loader workers
    included: the trainer must still save and exit cleanly."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "prn_blender.training",
            *_cli_args(data, run, "--max-steps", "100000", "--checkpoint-minutes", "60")]
    args[args.index("--num-workers") + 1] = "1"
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    _wait_for_steps(proc, run, 3)
    os.killpg(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output.decode()[-2000:]
    assert load_checkpoint(run / "last.pt")["step"] >= 3
    assert b"stopped at step" in output


def test_training_commands_give_one_line_for_common_mistakes(data, tmp_path, capsys):
    from prn_blender.training.__main__ import main

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not really")
    assert main(["export", "--checkpoint", str(weights), "--out", str(tmp_path / "o")]) == 2
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 64)
    assert main(["export", "--checkpoint", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert main(_cli_args(data, tmp_path / "r", "--shards", str(tmp_path / "no-shards"))) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 4 and "Traceback" not in err, lines
    assert "is an exported weights file, not a trainer checkpoint: pass it as --weights" in lines[0]
    assert "no checkpoint at" in lines[1] and "is not a readable trainer checkpoint" in lines[2]
    assert "No complete shards in" in lines[3]


def test_info_records_dev_figures_and_keeps_the_readout(data, tmp_path, capsys):
    from prn_blender.net.weights import read_info, rewrite_info
    from prn_blender.training.__main__ import main

    train(_config(data, tmp_path / "run", max_steps=1, lr=1e-3))
    out = export_checkpoint(tmp_path / "run" / "last.pt", tmp_path / "w.safetensors")
    readout = [[float(i), float(i) / 2] for i in range(68)]
    rewrite_info(out, replace(read_info(out), landmark_texels=readout))
    assert main(["info", "--weights", str(out), "--dev-nme", "300W 3.1 %"]) == 0
    info = read_info(out)
    assert info.dev_nme == "300W 3.1 %" and info.landmark_texels == readout
    printed = capsys.readouterr().out
    assert "landmark readout  fitted on training faces" in printed
    assert "dev NME           300W 3.1 %" in printed
    # Exporting over it says the readout goes.
    export_main = ["export", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--out", str(out)]
    assert main(export_main) == 0
    assert "had a fitted landmark readout, which this export replaced" in capsys.readouterr().err
    assert read_info(out).landmark_texels is None


def test_native_bf16_is_read_from_the_cpu_flags():
    from prn_blender.training.train import cpu_has_native_bf16

    assert cpu_has_native_bf16("processor: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16("flags : fpu amx_bf16 amx_tile\n")
    # AVX-512 without BF16 (Skylake .. Ice Lake): oneDNN emulates bf16 there, slower.
    assert not cpu_has_native_bf16("flags : fpu avx2 avx512f avx512bw avx512vl\n")
