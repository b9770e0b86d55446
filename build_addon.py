"""Build the Blender extension zip: ``python build_addon.py`` -> dist/prn_blender-<version>.zip.

Zip layout (the zip root is the add-on package, as Blender extensions require):
* blender_manifest.toml (from the repository root)
* the prn_blender package (__init__.py, blender/, core/, net/, inference/, errors.py): Blender
  imports blender/ + core/; the worker (run in its own Python with torch) needs core/, net/
  and inference/ too. Never training/, tests, caches or __pycache__.
* model_weights/: the UV layout (.npz), the weights (.safetensors) when present, MODEL_CARD.md;
  found at run time by core.layout.find_data_file / net.weights.default_weights_path.
* LICENSES.md: our MIT licence and the MIT notices of ICT-FaceKit and PRNet (uv-data).
Nothing from ../shared (3DDFA-V2, photos, face crops) is ever included; YuNet is not bundled.

Deterministic: files in sorted order with a fixed timestamp, so the same sources give the same
zip bytes. Check it with Blender's validator:
``python <bpy>/5.0/scripts/addons_core/bl_pkg/cli/blender_ext.py validate dist/<zip>``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent
PACKAGE = REPO / "prn_blender"
MANIFEST = REPO / "blender_manifest.toml"
MODEL_WEIGHTS = REPO / "model_weights"

PACKAGE_EXCLUDED_DIRS = frozenset({"training", "__pycache__"})
"""Top-level subpackages / folders of prn_blender left out of the zip."""
EXCLUDED_SUFFIXES = frozenset({".pyc", ".pyo", ".orig", ".rej", ".tmp", ".part"})
MODEL_FILES = ("uv_layout_ict256.npz", "MODEL_CARD.md", "face_detection_yunet_2023mar.onnx")
"""Shipped from model_weights/ (required); plus every *.safetensors there (optional)."""
ZIP_DATE = (2024, 1, 1, 0, 0, 0)

MIT_TEXT = """Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

LICENSES = f"""# Licences of the PRN Face from Photo add-on

## prn-blender code (MIT)

Copyright (c) 2026 prn-blender developers

{MIT_TEXT}
## ICT-FaceKit (MIT): source of the UV layout in model_weights/uv_layout_ict256.npz

Derived numbers only (face mask, mesh, landmark texels, neutral face). Source:
https://github.com/ICT-VGL/ICT-FaceKit

MIT License

Copyright (c) 2020 USC Institute for Creative Technologies

{MIT_TEXT}
## PRNet uv-data (MIT): reference for the 68 landmark calibration

Copyright (c) 2018 Yao Feng. Source: https://github.com/YadiraF/PRNet

{MIT_TEXT}
## YuNet face detector (MIT): model_weights/face_detection_yunet_2023mar.onnx

Copyright (c) 2020 Shiqi Yu. Source: https://github.com/opencv/opencv_zoo
(models/face_detection_yunet),
sha256 8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4.

{MIT_TEXT}
## Trained weights (model_weights/*.safetensors, when shipped)

Research use only: trained on research-only photo sets with targets from research-only
teachers. See model_weights/MODEL_CARD.md.
"""


def manifest_version(manifest: Path = MANIFEST) -> str:
    with open(manifest, "rb") as fh:
        return str(tomllib.load(fh)["version"])


def package_version(package: Path = PACKAGE) -> str:
    text = (package / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"no __version__ in {package / '__init__.py'}")
    return match.group(1)


def package_files(package: Path = PACKAGE) -> list[tuple[Path, str]]:
    """(source file, path inside the zip) for the package, sorted; excluded dirs skipped."""
    files = []
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package)
        if not path.is_file() or path.suffix in EXCLUDED_SUFFIXES:
            continue
        if relative.parts[0] in PACKAGE_EXCLUDED_DIRS or "__pycache__" in relative.parts:
            continue
        if relative.parts[0] == "model_weights":  # a stale in-package copy: we add our own
            continue
        files.append((path, relative.as_posix()))
    return files


def model_files(model_dir: Path = MODEL_WEIGHTS) -> list[tuple[Path, str]]:
    files = []
    for name in MODEL_FILES:
        path = model_dir / name
        if not path.is_file():
            raise SystemExit(f"missing {path}: generate the layout first (see README)")
        files.append((path, f"model_weights/{name}"))
    for path in sorted(model_dir.glob("*.safetensors")):
        files.append((path, f"model_weights/{path.name}"))
    return files


def _write(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.external_attr = 0o644 << 16
    compress = not name.endswith((".safetensors", ".png"))
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    archive.writestr(info, data)


def build(output_dir: Path = REPO / "dist", *, include_weights: bool = True) -> Path:
    """Write dist/prn_blender-<version>.zip and return its path."""
    version = manifest_version()
    if version != package_version():
        raise SystemExit(f"blender_manifest.toml version {version} != prn_blender.__version__ "
                         f"{package_version()}: bump them together")
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"prn_blender-{version}.zip"
    entries = [(MANIFEST, "blender_manifest.toml"), *package_files()]
    entries += [e for e in model_files() if include_weights or not e[1].endswith(".safetensors")]
    tmp = target.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w") as archive:
        for source, name in entries:
            _write(archive, name, source.read_bytes())
        _write(archive, "LICENSES.md", LICENSES.encode("utf-8"))
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "dist")
    parser.add_argument("--no-weights", action="store_true",
                        help="leave model_weights/*.safetensors out (users point the "
                             "preferences at a weights file)")
    args = parser.parse_args(argv)
    path = build(args.output_dir, include_weights=not args.no_weights)
    with zipfile.ZipFile(path) as archive:
        count = len(archive.namelist())
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, {count} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
