"""Panel and preferences draw() with a stand-in layout; registration; the venv installer's
commands (never a real install)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

bpy = pytest.importorskip("bpy")
from prn_blender.blender import operators, panel, preferences, scene, worker_env  # noqa: E402
from prn_blender.core.options import ROTATION_AVERAGE_DEG  # noqa: E402
from prn_blender.errors import DependencyError  # noqa: E402


class StandInLayout:
    """Records what draw() puts in a UILayout; row()/box()/column() share the record."""

    def __init__(self, log: list | None = None) -> None:
        self.log = [] if log is None else log
        self.enabled = True
        self.use_property_split = False

    def _child(self, kind: str) -> StandInLayout:
        self.log.append((kind,))
        return StandInLayout(self.log)

    def row(self, **_):
        return self._child("row")

    def column(self, **_):
        return self._child("column")

    def box(self):
        return self._child("box")

    def label(self, text: str = "", icon: str = "NONE") -> None:
        self.log.append(("label", text, icon))

    def operator(self, idname: str, text: str = "", icon: str = "NONE"):
        self.log.append(("operator", idname, text))
        return SimpleNamespace()

    def prop(self, data, name: str, **_) -> None:
        assert hasattr(data, name), name
        self.log.append(("prop", name))

    def progress(self, factor: float = 0.0, text: str = "") -> None:
        self.log.append(("progress", round(factor, 3), text))

    def separator(self) -> None:
        self.log.append(("separator",))

    def of(self, kind: str) -> list:
        return [entry for entry in self.log if entry[0] == kind]


def test_classes_are_registered_and_in_the_import_menu():
    assert hasattr(bpy.types, "PRN_OT_reconstruct_face")
    assert hasattr(bpy.types, "PRN_PT_reconstruct")
    assert bpy.ops.prn.reconstruct_face.get_rna_type().name == "Face from Photo"
    assert operators.menu_func_import in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize()


def test_panel_offers_reconstruct_when_idle_and_shows_the_active_face(synthetic_face):
    layout = StandInLayout()
    panel.PRN_PT_reconstruct.draw(SimpleNamespace(layout=layout), bpy.context)
    assert layout.of("operator") == [("operator", "prn.reconstruct_face", "Reconstruct Face")]
    obj = scene.build_face_object(synthetic_face, "shown", landmarks=False)
    bpy.context.view_layer.objects.active = obj
    layout = StandInLayout()
    panel.PRN_PT_reconstruct.draw(SimpleNamespace(layout=layout), bpy.context)
    labels = " ".join(entry[1] for entry in layout.of("label"))
    assert "shown" in labels and "Yaw" in labels and "px/m" in labels


def test_panel_shows_progress_and_cancel_while_a_batch_runs(monkeypatch):
    running = SimpleNamespace(finished=False, poll=lambda: (0.25, "me.jpg: Detecting faces"))
    monkeypatch.setattr(operators, "_ACTIVE_BATCH", running)
    layout = StandInLayout()
    panel.PRN_PT_reconstruct.draw(SimpleNamespace(layout=layout), bpy.context)
    assert layout.of("progress") == [("progress", 0.25, "me.jpg: Detecting faces")]
    assert layout.of("operator") == [("operator", "prn.cancel_reconstruction", "")]
    assert bpy.ops.prn.cancel_reconstruction.poll()


def test_preferences_draw_every_setting_and_the_worker_buttons():
    prefs = bpy.context.preferences.addons["prn_blender"].preferences
    layout = StandInLayout()

    class Self:  # the real preferences, with the stand-in layout
        def __getattr__(self, name):
            return layout if name == "layout" else getattr(prefs, name)

    preferences.PRN_AddonPreferences.draw(Self(), bpy.context)
    props = {entry[1] for entry in layout.of("prop")}
    assert props == {"python_path", "base_python", "device", "weights_path", "texture_size",
                     "start_timeout"}
    ops = {entry[1] for entry in layout.of("operator")}
    assert ops == {"prn.check_worker", "prn.create_worker_env"}
    assert any("Online access is off" in entry[1] for entry in layout.of("label"))


def test_texture_size_preference_is_the_operator_default():
    prefs = bpy.context.preferences.addons["prn_blender"].preferences
    saved = prefs.texture_size
    prefs.texture_size = 2048
    try:
        op = SimpleNamespace(texture_size=1024, faces="all", occlusion_mask=True, smoothing=0.5,
                             mirror_fill=False, averaging=True,
                             properties=SimpleNamespace(is_property_set=lambda name: False))
        options = operators.PRN_OT_reconstruct_face.reconstruct_options(op, bpy.context)
        op.properties = SimpleNamespace(is_property_set=lambda name: True)
        op.averaging = False
        explicit = operators.PRN_OT_reconstruct_face.reconstruct_options(op, bpy.context)
    finally:
        prefs.texture_size = saved
    assert options.texture_size == 2048 and explicit.texture_size == 1024
    assert options.faces == "all" and options.occlusion_mask and options.smoothing == 0.5
    assert not options.mirror_fill
    # "Average Views" switches both test-time averages together.
    assert options.mirror_average and options.rotation_average_deg == ROTATION_AVERAGE_DEG > 0
    assert not explicit.mirror_average and explicit.rotation_average_deg == 0.0


def test_venv_commands_use_pip_with_the_pinned_requirements(tmp_path):
    venv = tmp_path / "worker-venv"
    create = worker_env.create_venv_command("/usr/bin/python3.11", venv)
    assert create == ["/usr/bin/python3.11", "-m", "venv", str(venv)]
    python = worker_env.venv_python(venv)
    install = worker_env.pip_install_command(python, platform="linux")
    assert install[:4] == [str(python), "-m", "pip", "install"]
    assert install[install.index("-r") + 1] == str(worker_env.REQUIREMENTS)
    assert install[-2:] == ["--extra-index-url", worker_env.TORCH_CPU_INDEX]
    assert "--extra-index-url" not in worker_env.pip_install_command(python, platform="darwin")
    assert "--extra-index-url" not in worker_env.pip_install_command(python, cpu_only=False)
    pins = worker_env.REQUIREMENTS.read_text()
    for pin in ("torch==2.13.0", 'numpy==1.26.4; python_version < "3.13"',
                'numpy>=2.1,<3; python_version >= "3.13"', "opencv-python-headless==4.11.0.86",
                "safetensors", "tqdm"):
        assert pin in pins


def test_installer_refuses_without_online_access_and_says_what_to_do(tmp_path):
    installer = worker_env.WorkerEnvInstaller(sys.executable, tmp_path / "venv")
    with pytest.raises(DependencyError, match="Allow Online Access") as error:
        installer.start(online_access=False)
    # The manual commands, both of them, in order.
    assert f"-m venv {tmp_path / 'venv'}, then " in str(error.value)
    assert "-m pip install" in str(error.value)
    assert not installer.state.running and not (tmp_path / "venv").exists()


def test_intel_macs_are_refused_before_anything_runs():
    with pytest.raises(DependencyError, match="no longer publishes wheels for Intel Macs"):
        worker_env.check_platform("darwin", "x86_64")
    worker_env.check_platform("darwin", "arm64")
    worker_env.check_platform("linux", "x86_64")
    worker_env.check_platform("win32", "AMD64")


def _fake_base_python(tmp_path, script: str) -> str:
    """A 'base Python' that runs `script` for `-m venv DIR` (making DIR/bin/python) and for
    `-m pip ...`: the installer's two steps without a network."""
    import stat

    fake = tmp_path / "fake-python"
    fake.write_text(f"#!{sys.executable}\n{script}")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return str(fake)


FAKE_STEPS = """import os, sys
if sys.argv[1:3] == ["-m", "venv"]:
    os.makedirs(os.path.join(sys.argv[3], "bin"), exist_ok=True)
    target = os.path.join(sys.argv[3], "bin", "python")
    if not os.path.exists(target):
        os.symlink(sys.argv[0], target)
    sys.exit(0)
sys.stdout.buffer.write(b"Collecting torch==2.13.0\\nbad byte \\xe9 from a cp1252 pip\\n")
sys.exit(int(os.environ.get("FAKE_PIP_EXIT", "0")))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="a shebang script as the base Python")
def test_only_a_finished_install_becomes_the_auto_worker(tmp_path, monkeypatch):
    venv = tmp_path / "worker-venv"
    monkeypatch.setattr(worker_env, "default_venv_dir", lambda: venv)
    monkeypatch.delenv("PRN_BLENDER_PYTHON", raising=False)
    base = _fake_base_python(tmp_path, FAKE_STEPS)
    monkeypatch.setenv("FAKE_PIP_EXIT", "1")  # pip fails after the venv exists
    failed = worker_env.WorkerEnvInstaller(base, venv)
    failed.start(online_access=True)
    failed._thread.join(60)
    assert failed.state.error and failed.state.message == "Installation failed"
    assert "exit code 1" in failed.state.error and "\ufffd" in " ".join(failed.state.log)
    assert worker_env.venv_python(venv).exists()
    assert worker_env.default_python() is None  # not picked: the install did not finish
    monkeypatch.setenv("FAKE_PIP_EXIT", "0")
    done = worker_env.WorkerEnvInstaller(base, venv)
    done.start(online_access=True)
    done._thread.join(60)
    assert not done.state.error, done.state.error
    assert (venv / worker_env.READY_MARKER).is_file()
    assert worker_env.default_python() == str(worker_env.venv_python(venv))


def test_pip_output_advances_the_progress():
    state = worker_env.InstallState(running=True)
    for line in ("Collecting torch==2.13.0", "Collecting numpy==1.26.4",
                 "Installing collected packages: numpy, torch"):
        before = state.fraction
        worker_env.progress_from_pip_line(line, state, n_requirements=5)
        assert state.fraction > before
    worker_env.progress_from_pip_line("Successfully installed numpy torch", state, 5)
    assert state.fraction == 1.0 and state.message == "Installed"
    worker_env.progress_from_pip_line("ERROR: No matching distribution", state, 5)
    assert state.error.startswith("ERROR")


def test_auto_worker_python_prefers_the_addons_finished_venv(tmp_path, monkeypatch):
    venv = tmp_path / "worker-venv"
    monkeypatch.setattr(worker_env, "default_venv_dir", lambda: venv)
    monkeypatch.setenv("PRN_BLENDER_PYTHON", "/opt/py/bin/python")
    assert worker_env.default_python() == "/opt/py/bin/python"
    python = worker_env.venv_python(venv)
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert worker_env.default_python() == "/opt/py/bin/python"  # half-made: not yet
    (venv / worker_env.READY_MARKER).write_text("x")
    assert Path(worker_env.default_python()) == python
    # A venv made before the marker existed counts when all the worker's packages are in it.
    (venv / worker_env.READY_MARKER).unlink()
    site = venv / "lib" / "python3.11" / "site-packages"
    for name in worker_env.WORKER_PACKAGES[:-1]:
        (site / name).mkdir(parents=True)
    assert worker_env.default_python() == "/opt/py/bin/python"  # safetensors missing
    (site / "safetensors").mkdir()
    assert Path(worker_env.default_python()) == python


def test_the_windows_venv_folder_is_short():
    folder = worker_env.windows_venv_dir("C:\\Users\\someone\\AppData\\Local")
    assert str(folder) == "C:\\Users\\someone\\AppData\\Local\\prnb\\venv"
    # torch 2.13's longest file inside site-packages is ~171 characters: keep the whole path
    # under Windows' 260 (..\venv\Lib\site-packages\ is 22 more).
    assert len(str(folder)) + 22 + 171 < 260
