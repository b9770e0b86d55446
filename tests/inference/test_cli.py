"""The prn-blender command line: one clear line per failure, non-zero exits, batch folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from prn_blender.inference.cli import main


@pytest.fixture()
def photo_folder(tmp_path: Path, astronaut_jpg: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(astronaut_jpg, folder / "a.jpg")
    shutil.copy(astronaut_jpg, folder / "b.jpg")
    (folder / "notes.txt").write_text("not a photo, not picked up")
    return folder


def test_reconstruct_folder_writes_every_format(photo_folder, tmp_path, untrained_weights,
                                                capsys):
    out = tmp_path / "out"
    code = main(["reconstruct", str(photo_folder), "-o", str(out), "--format", "obj,glb,npz,ply",
                 "--texture-size", "128", "--landmarks-json", "--weights", str(untrained_weights),
                 "--allow-untrained", "--device", "cpu"])
    assert code == 0
    for stem in ("a", "b"):
        for suffix in (".obj", ".mtl", "_texture.png", ".glb", ".npz", ".ply",
                       "_landmarks.json"):
            assert (out / f"{stem}{suffix}").is_file(), f"{stem}{suffix}"
    landmarks = json.loads((out / "a_landmarks.json").read_text())
    assert len(landmarks["landmarks_px"]) == 68
    captured = capsys.readouterr()
    assert "UNTRAINED WEIGHTS" in captured.err
    assert "a.jpg: 1 face ->" in captured.out


def test_failed_photo_prints_one_line_and_the_rest_is_written(
        photo_folder, tmp_path, untrained_weights, capsys):
    (photo_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    out = tmp_path / "out"
    code = main(["reconstruct", str(photo_folder), str(tmp_path / "missing.jpg"), "-o", str(out),
                 "--texture-size", "64", "--weights", str(untrained_weights),
                 "--allow-untrained"])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "prn-blender: error: The photo" in err and "missing.jpg' does not exist" in err
    assert "'broken.jpg' is truncated" in err
    assert "2 of 4 photo(s) failed" in err
    assert (out / "a.obj").is_file() and (out / "b.obj").is_file()


QUICK = ["--texture-size", "64", "--no-refine", "--no-mirror-average", "--rotation-average", "0",
         "--allow-untrained", "--device", "cpu"]


def test_outputs_never_overwrite_the_photo_or_each_other(tmp_path, astronaut_jpg,
                                                         untrained_weights, capsys):
    import cv2

    # A PNG photo written into its own folder, and a same-named JPEG from another folder.
    folder, other = tmp_path / "c", tmp_path / "d"
    folder.mkdir()
    other.mkdir()
    png = folder / "face.png"
    cv2.imwrite(str(png), cv2.imread(str(astronaut_jpg)))
    shutil.copy(astronaut_jpg, other / "face.jpg")
    before = png.read_bytes()
    code = main(["reconstruct", str(png), str(other / "face.jpg"), "-o", str(folder),
                 "--format", "obj,npz", "--weights", str(untrained_weights), *QUICK])
    assert code == 0
    assert png.read_bytes() == before  # the photo is untouched
    for stem in ("face", "face_2"):
        for suffix in (".obj", ".mtl", "_texture.png", ".npz"):
            assert (folder / f"{stem}{suffix}").is_file(), f"{stem}{suffix}"
    assert "map_Kd face_2_texture.png" in (folder / "face_2.mtl").read_text()
    out = capsys.readouterr().out
    assert "face.png: 1 face -> face.obj, face.npz" in out
    assert "face.jpg: 1 face -> face_2.obj, face_2.npz" in out


def test_an_output_that_is_a_file_is_one_line_before_any_work(tmp_path, astronaut_jpg, capsys):
    target = tmp_path / "results"
    target.write_text("a file, not a folder")
    code = main(["reconstruct", str(astronaut_jpg), "-o", str(target)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "is a file, not a folder; choose a folder for -o" in err
    assert target.read_text() == "a file, not a folder"


def test_every_photo_failing_says_so_and_writes_nothing(tmp_path, untrained_weights, capsys):
    out = tmp_path / "out"
    code = main(["reconstruct", str(tmp_path / "gone.jpg"), "-o", str(out),
                 "--weights", str(untrained_weights), *QUICK])
    assert code == 1
    err = capsys.readouterr().err
    assert "none of the 1 photo(s) could be reconstructed" in err and "the others" not in err
    assert not any(out.iterdir())


def test_python_dash_m_runs_the_command_line():
    import subprocess
    import sys

    from prn_blender import __version__

    done = subprocess.run([sys.executable, "-m", "prn_blender", "--version"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"prn-blender {__version__}"


def test_untrained_weights_are_refused_without_the_flag(astronaut_jpg, tmp_path,
                                                        untrained_weights, capsys):
    code = main(["reconstruct", str(astronaut_jpg), "-o", str(tmp_path),
                 "--weights", str(untrained_weights)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "untrained network" in err and "Traceback" not in err


def test_demo_without_weights_fails_with_the_training_command(tmp_path, monkeypatch, capsys):
    from tests.inference.test_reconstructor import _without_installed_weights

    _without_installed_weights(monkeypatch)
    code = main(["demo", "-o", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "python -m prn_blender.training train" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_demo_with_untrained_weights_writes_mesh_preview_and_blend(
        tmp_path, untrained_weights, capsys):
    out = tmp_path / "out"
    code = main(["demo", "-o", str(out), "--weights", str(untrained_weights),
                 "--allow-untrained"])
    assert code == 0
    for name in ("astronaut.obj", "astronaut.glb", "astronaut_preview.png"):
        assert (out / name).is_file()
    try:
        import bpy  # noqa: F401
    except ImportError:
        assert "skipped the .blend" in capsys.readouterr().err
    else:
        assert (out / "astronaut.blend").is_file()


def test_info_shows_version_device_layout_and_weights(untrained_weights, capsys):
    assert main(["info", "--weights", str(untrained_weights)]) == 0
    out = capsys.readouterr().out
    assert "prn-blender    0.1.0" in out
    assert "device" in out and "cpu" in out
    assert "ict-face-256-v1" in out
    assert "UNTRAINED" in out and str(untrained_weights) in out
    assert "landmarks at the layout's texels" in out  # no fitted readout in this file


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--format", "fbx", "unknown format(s) fbx"),
    ("--threads", "0", "expected a whole number >= 1, got '0'"),
])
def test_bad_option_values_are_argument_errors(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["reconstruct", "x.jpg", "-o", str(tmp_path), option, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_rotation_steps_is_one_line_and_nothing_is_written(astronaut_jpg, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["reconstruct", str(astronaut_jpg), "-o", str(out), "--rotation-steps", "9"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "rotation_average_steps must be 1..4, got 9" in err
    assert not out.exists() or not any(out.iterdir())
