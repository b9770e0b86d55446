"""Quality report of the training targets (issue: targets at least as good as the better teacher).

`python -m prn_blender.training targets-report` reads the target shards and, for every
training face with hand labels (300W: 51 points without the jaw; AFLW: 19 points, balanced over
|yaw| bins; DESIGN.md section 5 metrics), scores three point sets on the SAME faces:

* the targets: the set's label points read from each target position map (what the network
  learns; `evaluate.LabelReader`: AFLW's at their fitted texels);
* the 3DDFA-V2 landmark teacher (cache/teachers/tddfa68.npz);
* the MediaPipe dense teacher; both teachers mapped to the set's points by
  model_weights/eval_point_maps.json (MediaPipe scored on the faces it detected; its detection
  rate is reported beside it).

The 300W and AFLW targets were fitted WITH the hand labels (FitSettings.label_weight) and then
pulled onto them (targets.label_corrected_map), so on those faces they carry the labels up to
the correction's ridge; the report checks that nothing broke that. The fit-alone and
labels-free figures are in docs/TRAINING.md. Also draws a few overlays (storage
crop with the target's 68 points, and the target's depth in UV space) to look at.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from ..core.geometry import landmarks_from_position_map
from ..core.layout import UVLayout, load_layout
from . import metrics
from .evaluate import LabelReader, load_point_maps, score
from .faces import load_face_set
from .shards import shard_stems
from .targets import MEDIAPIPE_FILES

REPO = Path(__file__).resolve().parents[2]


def shard_landmarks(shards: Path, layout: UVLayout) -> dict[str, dict[str, np.ndarray]]:
    """{set: {face name: (68 or 21, 3) target label points in storage px}} over every shard."""
    reader = LabelReader(layout)
    out: dict[str, dict[str, np.ndarray]] = {}
    for stem in shard_stems(shards):
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as meta:
            names, sources = [str(n) for n in meta["names"]], [str(s) for s in meta["sources"]]
        maps = np.load(stem.with_name(stem.name + ".maps.npy"), mmap_mode="r")
        for name, source, pm in zip(names, sources, maps, strict=True):
            if source in ("300w", "aflw"):
                out.setdefault(source, {})[name] = reader(np.asarray(pm, np.float32), source)
    return out


def _teacher_points(teachers: Path, set_name: str, names: list[str]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(3DDFA-V2, MediaPipe with NaN where it missed), (M, 68 or 21, 2) in the set's order."""
    with np.load(teachers / "tddfa68.npz", allow_pickle=False) as t:
        index = {str(n): i for i, n in enumerate(t[f"{set_name}_names"])}
        tddfa = t[f"{set_name}_landmarks"][[index[n] for n in names]][:, :, :2]
    mp478 = np.full((len(names), 478, 2), np.nan, np.float32)
    path = teachers / f"mediapipe478_{MEDIAPIPE_FILES[set_name]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as m:
            index = {str(n): i for i, n in enumerate(m["names"])}
            rows = np.array([index[n] for n in names])
            found = m["detected"][rows].astype(bool)
            mp478[found] = m["points"][rows][found][:, :, :2]
    return metrics.teacher_label_points(load_point_maps(), set_name, tddfa, mp478)


def targets_report(shards: Path, teachers: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{set: {"targets" | "3DDFA-V2 teacher" | "MediaPipe teacher": score dict}} (NME in %)."""
    layout = load_layout()
    targets = shard_landmarks(shards, layout)
    report = {}
    for set_name in ("300w", "aflw"):
        records = [r for r in load_face_set(set_name) if r.name in targets.get(set_name, {})]
        names = [r.name for r in records]
        if not names:
            continue
        ours = np.stack([targets[set_name][n] for n in names])
        tddfa, mp_points = _teacher_points(teachers, set_name, names)
        detected = np.isfinite(mp_points[:, -1, 0])
        report[set_name] = {
            "targets": score(records, ours, set_name),
            "3DDFA-V2 teacher": score(records, tddfa, set_name),
            "MediaPipe teacher": score(records, mp_points, set_name)
            | {"detected": float(detected.mean())},
        }
        if detected.any() and not detected.all():  # the others on MediaPipe's own faces too
            subset = [r for r, d in zip(records, detected, strict=True) if d]
            report[set_name]["targets (MediaPipe's faces)"] = score(subset, ours[detected],
                                                                     set_name)
            report[set_name]["3DDFA-V2 (MediaPipe's faces)"] = score(subset, tddfa[detected],
                                                                      set_name)
    return report


def draw_overlays(shards: Path, out_png: Path, layout: UVLayout, per_set: int = 2) -> Path:
    """A grid: per sample, the storage crop with the target's 68 points, and the target's
    depth (z) as grey levels in UV space (brighter = closer to the camera)."""
    tiles = []
    seen: dict[str, int] = {}
    for stem in shard_stems(shards):
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as meta:
            source = str(meta["sources"][0]) if len(meta["sources"]) else ""
            if not source or seen.get(source, 0) >= per_set:
                continue
            offsets, data = meta["jpeg_offsets"], meta["jpeg_data"]
            jpeg = data[offsets[0] : offsets[1]]
        pm = np.asarray(np.load(stem.with_name(stem.name + ".maps.npy"), mmap_mode="r")[0],
                        np.float32)
        image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        image = cv2.resize(image, (256, 256), interpolation=cv2.INTER_CUBIC)
        scale = 256 / cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE).shape[0]
        for x, y, _ in landmarks_from_position_map(pm, layout):
            cv2.circle(image, (round((x + 0.5) * scale - 0.5), round((y + 0.5) * scale - 0.5)),
                       2, (0, 255, 0), -1, cv2.LINE_AA)
        z = pm[..., 2]
        face = layout.face_mask & np.isfinite(z)
        depth = np.zeros((256, 256), np.uint8)
        depth[face] = np.clip(255 * (z[face] - z[face].min()) / max(np.ptp(z[face]), 1e-6),
                              0, 255).astype(np.uint8)
        tiles.append(np.hstack([image, cv2.cvtColor(depth, cv2.COLOR_GRAY2BGR)]))
        seen[source] = seen.get(source, 0) + 1
    if not tiles:
        raise ValueError(f"no shards in {shards}")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), np.vstack(tiles))
    return out_png


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, default=REPO / "cache" / "targets" / "shards")
    parser.add_argument("--teachers", type=Path, default=REPO / "cache" / "teachers")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "targets-report")


def run_report(args: argparse.Namespace) -> int:
    report = targets_report(args.shards, args.teachers)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "targets_nme.json").write_text(json.dumps(report, indent=1) + "\n")
    for set_name, rows in report.items():
        print(f"{set_name}:")
        for who, s in rows.items():
            extra = "".join(f"  {k} {v:.2f}" for k, v in s.items() if k not in ("all", "n"))
            print(f"  {who:30s} NME {s['all']:.2f} %  (n {s['n']:.0f}){extra}")
    png = draw_overlays(args.shards, args.out / "targets_overlays.png", load_layout())
    print(f"wrote {args.out / 'targets_nme.json'} and {png}")
    return 0
