"""Blender scene building and photo -> finished object through a warm worker (headless bpy).

    .venv/bin/python benchmarks/bench_scene.py [--runs 5] [--texture 1024] [--photo PATH]

1. `scene.build_face_object` for a full-resolution face (the real layout's mesh, the ICT
   neutral as in tests/blender/conftest.py; texture `--texture` px; 68 empties): median of
   `--runs`, plus its parts (mesh, material + packed texture, empties). Target <= 150 ms.
2. bpy.ops.prn.reconstruct_face on a photo through a warm worker (started and warmed once,
   not timed), texture `--texture` px: median of `--runs`. Target <= 1 s on CPU. Uses
   $PRN_BLENDER_WEIGHTS if set, else a randomly initialised network (same cost as trained).
Timings on a shared machine are noisy (±30 %).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bpy  # noqa: E402

from prn_blender.blender import scene  # noqa: E402
from prn_blender.core.layout import load_layout  # noqa: E402
from tests.blender.conftest import make_synthetic_result  # noqa: E402

DEFAULT_PHOTO = REPO.parent / "shared" / "data" / "photos" / "astronaut_frontal.jpg"


def _median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        bpy.ops.wm.read_homefile(app_template="")
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_build(runs: int, texture: int) -> None:
    layout = load_layout()
    base = make_synthetic_result(layout)
    rng = np.random.default_rng(0)
    # A photo-like texture (smooth + noise), so PNG compression is realistic.
    ramp = np.linspace(60, 200, texture, dtype=np.float32)
    image = ramp[None, :, None] * 0.5 + ramp[:, None, None] * 0.5
    image = image + rng.normal(0, 6, (texture, texture, 3))
    result = replace(base, texture=np.clip(image, 0, 255).astype(np.uint8))
    created = scene._Created()
    mesh_ms = _median_ms(lambda: scene._build_mesh(
        "m", result.vertices * 0.001, result.triangles, result.uvs, created), runs)
    tex_ms = _median_ms(lambda: scene._build_material("t", result, created), runs)
    full_ms = _median_ms(lambda: scene.build_face_object(result, "face"), runs)
    bare_ms = _median_ms(lambda: scene.build_face_object(result, "face", landmarks=False),
                         runs)
    print(f"scene build, {len(result.vertices)} vertices, {len(result.triangles)} triangles, "
          f"{texture}^2 texture, 68 empties: {full_ms:.0f} ms (target <= 150 ms)")
    print(f"  mesh + UVs + smooth {mesh_ms:.0f} ms | material + packed PNG {tex_ms:.0f} ms | "
          f"68 empties ~{full_ms - bare_ms:.0f} ms")


def bench_worker(runs: int, texture: int, photo: Path) -> None:
    import addon_utils

    from prn_blender.blender import operators

    if not photo.is_file():
        print(f"photo -> object: skipped ({photo} not found)")
        return
    weights = os.environ.get("PRN_BLENDER_WEIGHTS")
    if not weights:
        import torch

        from prn_blender.net.prnet import build_prnet, trainable_parameter_count
        from prn_blender.net.weights import WeightsInfo, save_weights

        torch.manual_seed(0)
        model = build_prnet()
        weights = str(Path(tempfile.mkdtemp()) / "untrained.safetensors")
        save_weights(model, weights, WeightsInfo(
            load_layout().layout_id, trainable_parameter_count(model), trained=False))
    addon_utils.enable("prn_blender", default_set=True)
    prefs = bpy.context.preferences.addons["prn_blender"].preferences
    prefs.weights_path, prefs.device = weights, "cpu"
    start = time.perf_counter()
    operators.get_client().start()
    bpy.ops.prn.reconstruct_face(filepath=str(photo), texture_size=texture)  # warm-up
    print(f"worker start + first photo (not timed below): {time.perf_counter() - start:.1f} s")
    ms = _median_ms(lambda: bpy.ops.prn.reconstruct_face(
        filepath=str(photo), texture_size=texture), runs)
    print(f"photo -> finished object, warm worker, {photo.name}, {texture}^2 texture: "
          f"{ms:.0f} ms (target <= 1000 ms)")
    operators.shutdown_client()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--texture", type=int, default=1024)
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    parser.add_argument("--skip-worker", action="store_true")
    args = parser.parse_args()
    bench_build(args.runs, args.texture)
    if not args.skip_worker:
        bench_worker(args.runs, args.texture, args.photo)


if __name__ == "__main__":
    main()
