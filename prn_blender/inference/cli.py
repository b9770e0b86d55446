"""The `prn-blender` command line: reconstruct photos or folders, show the installation, demo.

    prn-blender reconstruct PHOTO_OR_FOLDER... -o OUTDIR [--format obj,glb,npz,ply]
                [--texture-size N] [--all-faces] [--device cpu|cuda|mps] [--landmarks-json]
    prn-blender info
    prn-blender demo [PHOTO] [-o out]          (python -m prn_blender.inference.cli demo)

The model is loaded once and reused for every photo. Every failure an artist can fix prints
one line (`prn-blender: error: ...`) and exits non-zero; `--debug` shows tracebacks instead.
Exit codes: 0 all photos done, 1 one or more photos failed (the others were written), 2 nothing
could run (weights, device, arguments, output folder). Outputs never overwrite an input photo
or each other: a clash gets the next free name (<stem>_2...).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..core.options import (
    ROTATION_AVERAGE_DEG,
    ROTATION_AVERAGE_STEPS,
    SMOOTHING_TEXELS,
    Detector,
    FaceSelection,
    ReconstructOptions,
)
from ..errors import PrnError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
FORMATS = ("obj", "glb", "npz", "ply")
EXIT_OK, EXIT_SOME_FAILED, EXIT_FAILED = 0, 1, 2
PROG = "prn-blender"


def _error_line(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip().lower().lstrip(".") for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    return formats


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=(
        "One photo of a person to a textured 3D face mesh (PRNet, Feng et al., ECCV 2018)."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--weights", help="weights .safetensors file (default: installed)")
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                       help="where the network runs (auto: CUDA, else MPS, else CPU)")
        p.add_argument("--threads", type=_positive_int, default=None,
                       help="CPU threads for torch")
        p.add_argument("--allow-untrained", action="store_true",
                       help="accept an untrained weights file (plumbing tests: garbage output)")
        p.add_argument("--debug", action="store_true", help="show tracebacks")

    rec = sub.add_parser("reconstruct", help="reconstruct faces from photos or folders")
    rec.add_argument("photos", nargs="+", metavar="PHOTO", help="photos and/or folders")
    rec.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    rec.add_argument("--format", default="obj", type=_parse_formats,
                     help=f"comma-separated, from {','.join(FORMATS)} (default obj)")
    rec.add_argument("--texture-size", type=int, default=1024, help="UV texture side, px")
    rec.add_argument("--all-faces", action="store_true", help="every face, not only the largest")
    rec.add_argument("--landmarks-json", action="store_true",
                     help="also write the 68 landmarks, head pose and scale as JSON")
    rec.add_argument("--occlusion-mask", action="store_true",
                     help="black out the texture where the photo shows the face neither "
                          "directly nor mirrored (the mask is also stored in the npz)")
    rec.add_argument("--no-mirror-fill", action="store_true",
                     help="leave the photo smeared over the side of the face it does not "
                          "show, instead of mirroring the seen side there")
    rec.add_argument("--detector", default="auto", choices=[d.value for d in Detector])
    rec.add_argument("--yunet", default=None, help="YuNet ONNX file (default: the shipped one)")
    rec.add_argument("--no-refine", action="store_true",
                     help="skip the passes that re-crop from the predicted landmarks")
    rec.add_argument("--no-mirror-average", action="store_true",
                     help="run each crop once, not also mirrored (about half the network time)")
    rec.add_argument("--rotation-average", type=float, default=ROTATION_AVERAGE_DEG,
                     metavar="DEGREES",
                     help="also run each crop turned by up to -/+ this angle and average the "
                          f"surfaces (default {ROTATION_AVERAGE_DEG:g}; 0 = off, a fifth of the "
                          "network time)")
    rec.add_argument("--rotation-steps", type=int, default=ROTATION_AVERAGE_STEPS,
                     metavar="N",
                     help="turns per side for --rotation-average, evenly spaced "
                          f"(default {ROTATION_AVERAGE_STEPS}: -/+ half and -/+ the whole angle)")
    rec.add_argument("--smoothing", type=float, default=SMOOTHING_TEXELS, metavar="TEXELS",
                     help="Gaussian smoothing of the surface, sigma in network output texels "
                          f"(default {SMOOTHING_TEXELS:g}; 0 = the network's raw output)")
    model_args(rec)

    info = sub.add_parser("info", help="version, device, weights and layout")
    model_args(info)

    demo = sub.add_parser("demo", help="reconstruct the astronaut photo (or yours) into out/")
    demo.add_argument("photo", nargs="?", default=None, help="a photo (default: astronaut)")
    demo.add_argument("-o", "--out", type=Path, default=Path("out"), help="output folder")
    model_args(demo)
    return parser


def collect_photos(items: Sequence[str]) -> list[Path]:
    """Files as given; folders expanded to their images (sorted, not recursive)."""
    photos: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            photos.extend(sorted(p for p in path.iterdir()
                                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            photos.append(path)  # missing files are reported by load_photo, one line each
    return photos


def _load_reconstructor(args: argparse.Namespace):
    from .reconstructor import Reconstructor, UntrainedWeightsWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UntrainedWeightsWarning)
        reconstructor = Reconstructor(weights=args.weights, device=args.device,
                                      threads=args.threads, allow_untrained=args.allow_untrained)
    for warning in caught:
        print(f"{PROG}: WARNING: {warning.message}", file=sys.stderr)
    return reconstructor


def _path_key(path: Path) -> str:
    """Identity of a file for clash checks: resolved and lower-cased (macOS and Windows
    folders ignore case, so 'Face.obj' and 'face.obj' are one file there)."""
    return os.path.normcase(str(path.resolve())).lower()


def _planned_outputs(out: Path, base: str, faces: int, formats: Sequence[str],
                     landmarks_json: bool) -> list[tuple[int, Path, list[Path]]]:
    """(face index, path to write, every file that write creates) for one photo."""
    from ..core.export import obj_side_files

    planned = []
    for index in range(faces):
        name = base if faces == 1 else f"{base}_face{index}"
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            planned.append((index, path, [path, *obj_side_files(path)] if fmt == "obj"
                            else [path]))
        if landmarks_json:
            path = out / f"{name}_landmarks.json"
            planned.append((index, path, [path]))
    return planned


def _write_outputs(results: list, out: Path, stem: str, formats: Sequence[str],
                   landmarks_json: bool, reserved: set[str],
                   also_reserve: Sequence[str] = ()) -> list[Path]:
    """Write one photo's faces as <stem>.<fmt> (<stem>_face<i>.<fmt> for several faces), or
    <stem>_2... when any of those files is in `reserved`: the run's input photos and what
    earlier photos of the run wrote (two photos 'face.jpg' from different folders, or the
    photo itself in the output folder, are never written over). Adds what it wrote, and
    <base><suffix> for each of `also_reserve` (files the caller writes itself)."""
    from ..core.export import export_face_result

    base, number = stem, 1
    while True:
        planned = _planned_outputs(out, base, len(results), formats, landmarks_json)
        extra = [out / f"{base}{suffix}" for suffix in also_reserve]
        files = [f for _, _, fs in planned for f in fs] + extra
        if not any(_path_key(f) in reserved for f in files):
            reserved.update(_path_key(f) for f in extra)
            break
        number += 1
        base = f"{stem}_{number}"
    written = []
    for index, path, files in planned:
        if path.suffix == ".npz":
            results[index].save_npz(path)
        else:
            export_face_result(path, results[index])
        reserved.update(_path_key(f) for f in files)
        written.append(path)
    return written


def _prepare_out_dir(out: Path, create: bool = True) -> str | None:
    """Create the output folder (with `create`); why it cannot be used, or None."""
    if out.exists() and not out.is_dir():
        return f"the output '{out}' is a file, not a folder; choose a folder for -o."
    if not create:
        return None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create the output folder '{out}' ({error.strerror or error})."
    return None


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    photos = collect_photos(args.photos)
    if not photos:
        _error_line(f"no photos found in {', '.join(args.photos)} "
                    f"(looked for {', '.join(IMAGE_SUFFIXES)}).")
        return EXIT_FAILED
    try:
        options = ReconstructOptions(
            faces=FaceSelection.ALL if args.all_faces else FaceSelection.LARGEST,
            texture_size=args.texture_size, occlusion_mask=args.occlusion_mask,
            mirror_fill=not args.no_mirror_fill,
            detector=Detector(args.detector), yunet_model=args.yunet, refine=not args.no_refine,
            mirror_average=not args.no_mirror_average,
            rotation_average_deg=args.rotation_average,
            rotation_average_steps=args.rotation_steps, smoothing=args.smoothing)
    except ValueError as error:
        _error_line(str(error))
        return EXIT_FAILED
    problem = _prepare_out_dir(args.out)
    if problem:
        _error_line(problem)
        return EXIT_FAILED
    reconstructor = _load_reconstructor(args)
    reserved = {_path_key(p) for p in photos}
    failed = 0
    bar = tqdm(photos, unit="photo", disable=len(photos) < 2, file=sys.stderr)
    for photo in bar:
        bar.set_postfix_str(photo.name[:30])
        try:
            results = reconstructor.reconstruct(photo, options=options)
            written = _write_outputs(results, args.out, photo.stem, args.format,
                                     args.landmarks_json, reserved)
        except (PrnError, OSError) as error:
            if args.debug:
                raise
            failed += 1
            message = (str(error) if isinstance(error, PrnError) else
                       f"could not write the results of '{photo.name}' to {args.out} "
                       f"({error.strerror or error}).")
            tqdm.write(f"{PROG}: error: {message}", file=sys.stderr)
            continue
        tqdm.write(f"{photo.name}: {len(results)} face{'s' if len(results) != 1 else ''} -> "
                   f"{', '.join(p.name for p in written)}", file=sys.stdout)
    bar.close()
    if failed == len(photos):
        print(f"{PROG}: none of the {len(photos)} photo(s) could be reconstructed.",
              file=sys.stderr)
        return EXIT_SOME_FAILED
    if failed:
        print(f"{PROG}: {failed} of {len(photos)} photo(s) failed; the others are in "
              f"{args.out}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    import cv2
    import torch

    from ..core.layout import LAYOUT_FILENAME, find_data_file, load_layout
    from ..net.device import select_device
    from ..net.weights import default_weights_path, read_info
    from .client import temp_root
    from .detect import find_yunet_model

    lines = [
        ("prn-blender", __version__),
        ("python", f"{sys.version.split()[0]} ({sys.executable})"),
        ("torch", torch.__version__),
        ("opencv", cv2.__version__),
    ]
    try:
        lines.append(("device", str(select_device(args.device))))
    except PrnError as error:
        lines.append(("device", f"unavailable: {error}"))
    lines.append(("cpu threads", str(torch.get_num_threads())))
    try:
        layout_path = find_data_file(LAYOUT_FILENAME)
        lines.append(("layout", f"{load_layout().layout_id} ({layout_path})"))
    except PrnError as error:
        lines.append(("layout", f"missing: {error}"))
    try:
        path = default_weights_path(args.weights)
        winfo = read_info(path)
        state = "trained" if winfo.trained else "UNTRAINED (garbage output)"
        lines.append(("weights", f"{path} [{state}, layout {winfo.layout_id}, "
                                 f"sha256 {winfo.sha256[:12]}]"))
        if winfo.dev_nme:
            lines.append(("dev NME", winfo.dev_nme))
        lines.append(("readout", "landmarks at texels fitted on training faces"
                      if winfo.landmark_texels is not None else "landmarks at the layout's texels"))
    except PrnError as error:
        lines.append(("weights", f"none: {error}"))
    yunet = find_yunet_model()
    lines.append(("face detector", f"YuNet ({yunet})" if yunet else "OpenCV Haar cascades"))
    lines.append(("worker files", str(temp_root())))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from ..core.photo import load_photo
    from ..core.render import render_preview

    if args.photo is None:
        try:
            from skimage import data
        except ImportError:
            _error_line("the demo photo comes from scikit-image, which is not installed: "
                        "`pip install scikit-image`, or pass a photo: demo PHOTO.")
            return EXIT_FAILED
        photo, stem = np.ascontiguousarray(data.astronaut()[:, :, :3]), "astronaut"
    else:
        photo, stem = load_photo(args.photo), Path(args.photo).stem
    out: Path = args.out
    problem = _prepare_out_dir(out, create=False)  # before the model loads; created after
    if problem:
        _error_line(problem)
        return EXIT_FAILED
    reconstructor = _load_reconstructor(args)
    results = reconstructor.reconstruct(photo)
    result = results[0]
    problem = _prepare_out_dir(out)
    if problem:
        _error_line(problem)
        return EXIT_FAILED
    reserved = set() if args.photo is None else {_path_key(Path(args.photo))}
    written = _write_outputs([result], out, stem, ("obj", "glb"), False, reserved,
                             also_reserve=("_preview.png", ".blend"))
    stem = written[0].stem  # <stem>_2 when one of the files would be the photo itself
    preview = render_preview(result.vertices, result.triangles, photo, result.landmarks)
    preview_path = out / f"{stem}_preview.png"
    cv2.imwrite(str(preview_path), cv2.cvtColor(preview, cv2.COLOR_RGB2BGR))
    written.append(preview_path)
    blend = _write_blend(result, out / f"{stem}.blend", stem)
    if isinstance(blend, Path):
        written.append(blend)
    else:
        print(f"{PROG}: skipped the .blend: {blend}", file=sys.stderr)
    for path in written:
        print(path)
    return EXIT_OK


def _write_blend(result: object, path: Path, name: str) -> Path | str:
    """Save a .blend with the face (needs bpy); returns the path or why it was skipped."""
    try:
        import bpy
    except ImportError:
        return "bpy is not installed (pip install bpy==5.0.1)"
    try:
        from ..blender.scene import build_face_object
    except ImportError as error:
        return f"prn_blender.blender.scene is not available ({error})"
    bpy.ops.wm.read_factory_settings(use_empty=True)
    build_face_object(result, name)
    bpy.ops.wm.save_as_mainfile(filepath=str(path.resolve()))
    return path


COMMANDS = {"reconstruct": cmd_reconstruct, "info": cmd_info, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `prn-blender` console script."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or bool(os.environ.get("PRN_BLENDER_DEBUG"))
    try:
        return COMMANDS[args.command](args)
    except PrnError as error:
        if debug:
            raise
        _error_line(str(error))
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
