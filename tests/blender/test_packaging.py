"""The extension zip: contents, Blender's own validator, installation as an extension and as a
legacy add-on (each in a fresh bpy subprocess, with torch and OpenCV blocked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = (Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli"
             / "blender_ext.py")

BLOCKER = textwrap.dedent("""
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "cv2"):
                raise ImportError(f"{name} is blocked: the add-on must not import it")
            return None
    sys.meta_path.insert(0, _Block())
""")


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO))
    try:
        import build_addon
    finally:
        sys.path.remove(str(REPO))
    return build_addon.build(tmp_path_factory.mktemp("dist"))


def run_bpy(script: str, tmp_path: Path, **env: str) -> dict:
    """Run `script` in a fresh Python with bpy (cwd = tmp_path, so the repository is not on
    sys.path); the script prints one JSON line starting with 'RESULT '."""
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full_env.update(env)
    proc = subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(script)],
                          cwd=tmp_path, env=full_env, capture_output=True, text=True,
                          timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULT "):])


def test_zip_has_manifest_at_root_and_leaves_out_training_tests_and_caches(addon_zip):
    assert addon_zip.name == "prn_blender-0.1.0.zip"
    names = zipfile.ZipFile(addon_zip).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    for required in ("blender/operators.py", "blender/worker_requirements.txt",
                     "core/layout.py", "net/prnet.py", "inference/worker.py",
                     "inference/client.py", "model_weights/uv_layout_ict256.npz",
                     "model_weights/MODEL_CARD.md", "LICENSES.md"):
        assert required in names, required
    assert not [n for n in names if n.startswith(("training/", "tests/"))]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.lower().endswith((".jpg", ".jpeg"))]
    assert not [n for n in names if "3ddfa" in n.lower()]  # the teacher never ships
    assert "model_weights/face_detection_yunet_2023mar.onnx" in names
    licences = zipfile.ZipFile(addon_zip).read("LICENSES.md").decode()
    assert "USC Institute for Creative Technologies" in licences
    assert "Copyright (c) 2020 Shiqi Yu" in licences


def test_zip_is_byte_identical_when_rebuilt(addon_zip, tmp_path):
    import build_addon  # imported by the fixture

    again = build_addon.build(tmp_path)
    assert again.read_bytes() == addon_zip.read_bytes()


def test_blenders_validator_accepts_the_zip(addon_zip):
    proc = subprocess.run([sys.executable, str(VALIDATOR), "validate", str(addon_zip)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


def test_installs_as_extension_and_finds_its_data_without_torch(addon_zip, tmp_path,
                                                                 untrained_weights):
    result = run_bpy(f"""
        import json, sys, bpy
        bpy.ops.extensions.package_install_files(
            filepath={str(addon_zip)!r}, repo="user_default", enable_on_install=True)
        pkg = "bl_ext.user_default.prn_blender"
        from bl_ext.user_default.prn_blender.core.layout import find_data_file
        layout = find_data_file("uv_layout_ict256.npz")
        ok = bpy.ops.prn.check_worker()
        from bl_ext.user_default.prn_blender.blender import preferences
        print("RESULT " + json.dumps({{
            "enabled": pkg in bpy.context.preferences.addons,
            "has_prefs": bpy.context.preferences.addons[pkg].preferences is not None,
            "operator": hasattr(bpy.types, "PRN_OT_reconstruct_face"),
            "layout": str(layout),
            "check": sorted(ok),
            "check_text": preferences.worker_check_text,
            "torch": "torch" in sys.modules, "cv2": "cv2" in sys.modules,
        }}))
    """, tmp_path, BLENDER_USER_RESOURCES=str(tmp_path / "user"),
        PRN_BLENDER_WEIGHTS=str(untrained_weights), PRN_BLENDER_PYTHON=sys.executable)
    assert result["enabled"] and result["has_prefs"] and result["operator"]
    assert result["layout"].startswith(str(tmp_path / "user"))  # the copy inside the package
    assert not result["torch"] and not result["cv2"]
    # The worker runs from the installed copy (core/net/inference are in the zip).
    assert result["check"] == ["FINISHED"], result["check_text"]
    assert "UNTRAINED" in " ".join(result["check_text"])


def test_works_as_legacy_addon_folder_with_torch_and_cv2_blocked(addon_zip, tmp_path):
    addons = tmp_path / "scripts" / "addons"
    with zipfile.ZipFile(addon_zip) as archive:
        archive.extractall(addons / "prn_blender")
    result = run_bpy("""
        import json, sys, bpy
        import addon_utils
        module = addon_utils.enable("prn_blender", default_set=True, handle_error=None)
        print("RESULT " + json.dumps({
            "module": getattr(module, "__file__", None),
            "operator": hasattr(bpy.types, "PRN_OT_reconstruct_face"),
            "panel": hasattr(bpy.types, "PRN_PT_reconstruct"),
            "torch": "torch" in sys.modules, "cv2": "cv2" in sys.modules,
        }))
    """, tmp_path, BLENDER_USER_SCRIPTS=str(tmp_path / "scripts"))
    assert result["module"] == str(addons / "prn_blender" / "__init__.py")
    assert result["operator"] and result["panel"]
    assert not result["torch"] and not result["cv2"]
