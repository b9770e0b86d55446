"""bpy.ops.prn.reconstruct_face headless, end to end through the real WorkerClient.

Most tests use a stand-in worker (fake_worker.py: the real protocol, a known FaceResult), so
they check the operator's plumbing exactly and fast; the tests marked `needs_reconstructor`
run the real worker with randomly initialised weights on real and synthetic photos.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from prn_blender.core.frames import photo_to_blender
from prn_blender.core.options import ReconstructOptions

from ..conftest import SHARED_DATA, needs_shared
from .conftest import PHOTO_SIZE, needs_reconstructor, render_synthetic_photo

bpy = pytest.importorskip("bpy")
from prn_blender.blender import operators, scene  # noqa: E402

FAKE_WORKER = Path(__file__).with_name("fake_worker.py")


def counts() -> tuple[int, ...]:
    d = bpy.data
    return (len(d.objects), len(d.meshes), len(d.materials), len(d.images),
            len(d.collections), len(d.cameras))


@pytest.fixture
def photo(tmp_path) -> Path:
    """A small real PNG (the stand-in worker does not read it)."""
    path = tmp_path / "portrait.png"
    path.write_bytes(scene.png_bytes(np.full((48, 64, 3), 90, dtype=np.uint8)))
    return path


@pytest.fixture
def fake_worker(tmp_path, monkeypatch, synthetic_face):
    """Point the preferences at the stand-in worker; returns a function setting its mode."""
    result = tmp_path / "face.npz"
    synthetic_face.save_npz(result)
    wrapper = tmp_path / "fake-python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_WORKER}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_WORKER_RESULTS", str(result))
    prefs = bpy.context.preferences.addons["prn_blender"].preferences
    saved = prefs.python_path
    prefs.python_path = str(wrapper)
    operators.shutdown_client()

    def set_mode(mode: str) -> None:
        monkeypatch.setenv("FAKE_WORKER_MODE", mode)
        operators.shutdown_client()  # the mode is read when the worker starts

    set_mode("")
    yield set_mode
    operators.shutdown_client()
    prefs.python_path = saved


def test_operator_builds_the_worker_result_like_the_api(fake_worker, photo, synthetic_face):
    assert bpy.ops.prn.reconstruct_face(filepath=str(photo)) == {"FINISHED"}
    obj = bpy.data.objects["portrait"]
    bpy.context.view_layer.update()
    co = np.empty(len(obj.data.vertices) * 3, dtype=np.float32)
    obj.data.vertices.foreach_get("co", co)
    world = co.reshape(-1, 3) + np.array(obj.location, dtype=np.float32)
    centre = np.array([(PHOTO_SIZE[0] - 1) / 2, (PHOTO_SIZE[1] - 1) / 2, 0], dtype=np.float32)
    expected = photo_to_blender(synthetic_face.vertices - centre, synthetic_face.metres_per_px)
    np.testing.assert_allclose(world, expected, atol=1e-5)
    assert len([c for c in obj.children if c.type == "EMPTY"]) == 68
    assert obj["prn_photo"] == str(photo)
    assert bpy.context.scene.camera == scene.face_camera(obj)
    assert bpy.context.scene.render.resolution_x == PHOTO_SIZE[0]
    assert bpy.context.view_layer.objects.active == obj
    assert "portrait" in bpy.context.view_layer.active_layer_collection.collection.children


def test_options_turn_off_landmarks_and_camera(fake_worker, photo):
    assert bpy.ops.prn.reconstruct_face(filepath=str(photo), landmarks=False,
                                        add_camera=False, mesh_resolution="2") == {"FINISHED"}
    obj = bpy.data.objects["portrait"]
    assert not obj.children
    assert scene.face_camera(obj) is None
    assert len(obj.data.vertices) < 20000


def test_multi_file_selection_builds_one_object_per_photo(fake_worker, photo):
    second = photo.with_name("second.png")
    second.write_bytes(photo.read_bytes())
    result = bpy.ops.prn.reconstruct_face(
        directory=str(photo.parent), files=[{"name": photo.name}, {"name": second.name}])
    assert result == {"FINISHED"}
    assert {"portrait", "second"} <= set(bpy.data.objects.keys())


def test_one_undo_step_removes_everything(fake_worker, photo):
    before = counts()
    bpy.ops.ed.undo_push(message="before")
    # undo=True: push an undo step as the UI does (Python calls skip it by default).
    assert bpy.ops.prn.reconstruct_face("EXEC_DEFAULT", True, filepath=str(photo)) == {
        "FINISHED"}
    assert counts() != before
    bpy.ops.ed.undo()
    assert counts() == before
    assert "portrait" not in bpy.data.objects


def test_missing_photo_reports_error_and_creates_nothing(fake_worker, tmp_path):
    before = counts()
    with pytest.raises(RuntimeError, match=r"does not exist\. Choose an existing image"):
        bpy.ops.prn.reconstruct_face(filepath=str(tmp_path / "nobody.jpg"))
    assert counts() == before


def test_non_image_file_reports_error_and_creates_nothing(fake_worker, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    before = counts()
    with pytest.raises(RuntimeError, match="is not a supported image"):
        bpy.ops.prn.reconstruct_face(filepath=str(notes))
    assert counts() == before


def test_no_face_reports_the_workers_message(fake_worker, photo):
    fake_worker("noface")
    before = counts()
    with pytest.raises(RuntimeError, match=r"No face found\. Try a closer photo"):
        bpy.ops.prn.reconstruct_face(filepath=str(photo))
    assert counts() == before


def test_worker_crash_reports_error_and_creates_nothing(fake_worker, photo):
    fake_worker("crash")
    before = counts()
    with pytest.raises(RuntimeError, match=r"worker exited \(code 7\)"):
        bpy.ops.prn.reconstruct_face(filepath=str(photo))
    assert counts() == before
    fake_worker("")  # the next run restarts the worker
    assert bpy.ops.prn.reconstruct_face(filepath=str(photo)) == {"FINISHED"}


def test_worker_that_cannot_start_reports_error(fake_worker, photo):
    fake_worker("startup")
    before = counts()
    with pytest.raises(RuntimeError, match="stopped during start-up"):
        bpy.ops.prn.reconstruct_face(filepath=str(photo))
    assert counts() == before


def test_cancel_stops_the_batch_and_nothing_is_built(fake_worker, photo):
    fake_worker("slow")
    batch = operators.ReconstructionBatch(
        operators.get_client(), [str(photo)], ReconstructOptions()).start()
    deadline = time.monotonic() + 20
    while batch.poll()[0] <= 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    fraction, message = batch.poll()
    assert 0 < fraction < 1 and message.startswith("portrait.png: step")
    batch.cancel()
    assert batch.wait(5)
    assert batch.cancelled and batch.outcomes == [] and batch.fatal is None


def test_cancel_button_polls_only_while_a_batch_runs(fake_worker):
    assert not bpy.ops.prn.cancel_reconstruction.poll()


def test_check_worker_reports_interpreter_and_device(fake_worker):
    from prn_blender.blender import preferences

    assert bpy.ops.prn.check_worker() == {"FINISHED"}
    text = " ".join(preferences.worker_check_text)
    assert "torch fake" in text and "device cpu" in text and "UNTRAINED" in text


# ----------------------------------------------------------------- real worker (untrained)
@needs_reconstructor
@needs_shared
def test_real_photo_through_the_real_worker(addon_prefs):
    photo = SHARED_DATA / "photos" / "astronaut_frontal.jpg"
    before = counts()
    assert bpy.ops.prn.reconstruct_face(filepath=str(photo), texture_size=256) == {"FINISHED"}
    obj = bpy.data.objects["astronaut_frontal"]
    assert len(obj.data.vertices) > 30000
    assert len([c for c in obj.children if c.type == "EMPTY"]) == 68
    assert obj["prn_pixels_per_metre"] > 0
    assert counts() != before


@needs_reconstructor
def test_synthetic_rendered_face_through_the_real_worker(addon_prefs, tmp_path,
                                                         synthetic_face):
    """A face photo the test renders itself (the ICT neutral, shaded, with painted eyes, brows
    and lips): detected, reconstructed (untrained weights: shape is arbitrary) and built."""
    operators.shutdown_client()
    path = render_synthetic_photo(synthetic_face, tmp_path / "rendered.png")
    assert bpy.ops.prn.reconstruct_face(filepath=str(path), texture_size=256,
                                        occlusion_mask=True) == {"FINISHED"}
    obj = bpy.data.objects["rendered"]
    assert len(obj.data.vertices) == len(synthetic_face.vertices)
    assert len([c for c in obj.children if c.type == "EMPTY"]) == 68
    nodes = obj.data.materials[0].node_tree.nodes
    assert nodes["Image Texture"].image.size[0] == 256
    background = scene.face_camera(obj).data.background_images[0].image
    assert background.packed_file is not None and tuple(background.size) == PHOTO_SIZE


@needs_reconstructor
def test_corrupt_photo_reports_the_workers_photo_error(addon_prefs, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    before = counts()
    with pytest.raises(RuntimeError, match=r"broken\.jpg"):
        bpy.ops.prn.reconstruct_face(filepath=str(broken))
    assert counts() == before


def test_blocked_online_access_refuses_to_create_the_worker_env():
    assert not bpy.app.online_access  # headless bpy: off unless --online-mode
    with pytest.raises(RuntimeError, match="online access is off"):
        bpy.ops.prn.create_worker_env()


def test_empty_weights_preference_leaves_the_choice_to_the_worker():
    prefs = bpy.context.preferences.addons["prn_blender"].preferences
    saved = prefs.weights_path
    prefs.weights_path = ""
    try:
        settings = operators.client_settings()
    finally:
        prefs.weights_path = saved
    assert settings["weights"] is None  # the worker then tries $PRN_BLENDER_WEIGHTS, the package
    assert settings["device"] == prefs.device


def test_invoking_the_import_prewarms_the_worker(fake_worker, photo, monkeypatch):
    """Opening the file browser (invoke) starts the worker in the background; the job then
    runs on that same worker."""
    from types import SimpleNamespace

    assert operators.get_client(bpy.context)._process is None
    opened = []  # headless Blender has no window for the file browser: record the call
    monkeypatch.setattr(operators.ImportHelper, "invoke",
                        lambda self, context, event: opened.append(self) or {"RUNNING_MODAL"})
    operator = SimpleNamespace()
    assert operators.PRN_OT_reconstruct_face.invoke(operator, bpy.context, None) == \
        {"RUNNING_MODAL"}
    assert opened == [operator]
    client = operators.get_client(bpy.context)
    deadline = time.monotonic() + 60
    while not (client.is_alive() and client.info) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.is_alive() and client.info
    pid = client._process.pid
    assert operators.prewarm_worker(bpy.context) is None  # already running: nothing to do
    assert bpy.ops.prn.reconstruct_face(filepath=str(photo)) == {"FINISHED"}
    assert operators.get_client(bpy.context)._process.pid == pid


def test_a_failed_prewarm_is_quiet_and_the_reconstruction_reports_it(
    fake_worker, photo, tmp_path, monkeypatch,
):
    escaped: list = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    prefs = bpy.context.preferences.addons["prn_blender"].preferences
    prefs.python_path = str(tmp_path / "no-such-python")
    operators.shutdown_client()
    thread = operators.prewarm_worker(bpy.context)
    thread.join(60)
    assert not thread.is_alive() and escaped == []
    with pytest.raises(RuntimeError, match="no-such-python"):
        bpy.ops.prn.reconstruct_face(filepath=str(photo))


def test_prewarm_never_touches_the_client_of_a_running_batch(fake_worker, photo, monkeypatch):
    class Running:
        finished = False

    monkeypatch.setattr(operators, "_ACTIVE_BATCH", Running())
    before = operators._CLIENT
    assert operators.prewarm_worker(bpy.context) is None
    assert operators._CLIENT is before


class _WindowManager:
    """Records what the modal operator asks of Blender's window manager."""

    def __init__(self) -> None:
        self.progress: list[int] = []
        self.ended = False
        self.removed_timers: list[object] = []

    def progress_update(self, value: int) -> None:
        self.progress.append(value)

    def progress_end(self) -> None:
        self.ended = True

    def event_timer_remove(self, timer: object) -> None:
        self.removed_timers.append(timer)


class _Workspace:
    def __init__(self) -> None:
        self.status: list[str | None] = []

    def status_text_set(self, text: str | None) -> None:
        self.status.append(text)


class _ModalContext:
    """The parts of a windowed context the modal handler touches; scene and view layer are the
    real ones, so a finished batch really builds."""

    def __init__(self) -> None:
        self.window_manager, self.workspace = _WindowManager(), _Workspace()
        self.screen = None
        self.scene, self.view_layer = bpy.context.scene, bpy.context.view_layer


class _Event:
    def __init__(self, type_: str, value: str = "NOTHING") -> None:
        self.type, self.value = type_, value


class _RunningOperator:
    """Stands in for the operator instance Blender keeps while modal (bpy cannot construct
    one outside an operator call): its methods are the operator's own, its properties the
    defaults."""

    modal = operators.PRN_OT_reconstruct_face.modal
    _end_modal = operators.PRN_OT_reconstruct_face._end_modal
    finish = operators.PRN_OT_reconstruct_face.finish
    build = operators.PRN_OT_reconstruct_face.build

    def __init__(self) -> None:
        self.landmarks, self.add_camera = True, False
        self.pose, self.mesh_resolution = "PHOTO", "1"
        self._timer = object()
        self.reports: list[tuple[str, str]] = []

    def report(self, level: set[str], message: str) -> None:
        self.reports.append((next(iter(level)), message))


def _start_modal(photo: Path) -> tuple[_RunningOperator, _ModalContext]:
    batch = operators.ReconstructionBatch(
        operators.get_client(), [str(photo)], ReconstructOptions()).start()
    operators._ACTIVE_BATCH = batch  # what execute() does before handing over to modal()
    return _RunningOperator(), _ModalContext()


def _run_timers(op: _RunningOperator, context: _ModalContext, limit_s: float = 30.0) -> set[str]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        result = op.modal(context, _Event("TIMER"))
        if result != {"RUNNING_MODAL"}:
            return result
        time.sleep(0.05)
    raise AssertionError("the modal handler never finished")


def test_modal_timer_updates_progress_and_builds_when_done(fake_worker, photo):
    """Timer ticks: progress bar and status text follow the worker's progress; at the end the
    face is built, the timer removed and the status bar and progress bar cleared."""
    fake_worker("")
    before = counts()
    op, context = _start_modal(photo)
    assert op.modal(context, _Event("MOUSEMOVE")) == {"PASS_THROUGH"}  # Blender keeps working
    assert _run_timers(op, context) == {"FINISHED"}
    assert counts()[0] > before[0] and bpy.context.view_layer.objects.active.name == "portrait"
    assert context.window_manager.progress and context.window_manager.ended
    assert context.window_manager.progress == sorted(context.window_manager.progress)
    assert context.window_manager.removed_timers and op._timer is None
    statuses = context.workspace.status
    assert statuses[-1] is None and all("Esc to cancel" in s for s in statuses[:-1])
    assert operators.active_batch() is None
    assert op.reports[-1][0] == "INFO"


def test_escape_cancels_the_modal_batch_and_nothing_is_built(fake_worker, photo):
    """Esc while the worker runs: the batch is cancelled, nothing is added to the scene, and
    the progress bar, timer and status text are cleaned up."""
    fake_worker("slow")
    before = counts()
    op, context = _start_modal(photo)
    deadline = time.monotonic() + 20
    while op.modal(context, _Event("TIMER")) == {"RUNNING_MODAL"} and not any(
            context.window_manager.progress) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(context.window_manager.progress)  # the worker is mid-way
    assert op.modal(context, _Event("ESC", "PRESS")) == {"PASS_THROUGH"}
    assert _run_timers(op, context, 10.0) == {"CANCELLED"}
    assert counts() == before
    assert ("WARNING", "Face reconstruction cancelled; nothing was added.") in op.reports
    assert context.window_manager.ended and context.workspace.status[-1] is None
    assert operators.active_batch() is None and op._timer is None


# ----------------------------------------------------------------- faults, cancel, redo
def test_cancel_while_the_worker_starts_ends_the_batch_at_once(fake_worker, photo):
    """Esc during a slow worker start-up (the start timeout is 120 s) stops the worker, so
    the batch ends now; the next run starts a fresh worker."""
    fake_worker("slowstart")
    batch = operators.ReconstructionBatch(
        operators.get_client(), [str(photo)], ReconstructOptions()).start()
    deadline = time.monotonic() + 10
    while not batch._starting and time.monotonic() < deadline:
        time.sleep(0.02)
    assert batch._starting
    time.sleep(0.3)  # the worker process is up and silent
    cancelled_at = time.monotonic()
    batch.cancel()
    assert batch.wait(10), "the batch kept waiting for the worker"
    assert time.monotonic() - cancelled_at < 10
    assert batch.cancelled and batch.fatal is None and batch.outcomes == []
    fake_worker("")
    assert bpy.ops.prn.reconstruct_face(filepath=str(photo)) == {"FINISHED"}


def test_a_worker_crash_mid_batch_keeps_the_faces_already_finished(fake_worker, photo):
    fake_worker("crashsecond")
    second, third = photo.with_name("second.png"), photo.with_name("third.png")
    for path in (second, third):
        path.write_bytes(photo.read_bytes())
    before = counts()
    op = _StandInImport(photo.parent, [photo.name, second.name, third.name])
    assert operators.PRN_OT_reconstruct_face.execute(op, bpy.context) == {"FINISHED"}, op.reports
    assert counts()[0] > before[0]
    assert "portrait" in bpy.data.objects
    assert "second" not in bpy.data.objects and "third" not in bpy.data.objects
    level, message = op.reports[0]
    assert level == "WARNING" and "worker exited (code 7)" in message
    assert message.endswith("Not reconstructed: second.png, third.png.")


def test_check_worker_refuses_while_a_batch_runs_and_leaves_its_worker(fake_worker, photo):
    fake_worker("slow")
    batch = operators.ReconstructionBatch(
        operators.get_client(), [str(photo)], ReconstructOptions()).start()
    operators._ACTIVE_BATCH = batch
    try:
        deadline = time.monotonic() + 20
        while batch.poll()[0] <= 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        prefs = bpy.context.preferences.addons["prn_blender"].preferences
        prefs.device = "cpu"  # a changed preference would otherwise replace the worker
        with pytest.raises(RuntimeError, match="reconstruction is running; check the worker"):
            bpy.ops.prn.check_worker()
        assert batch.client.is_alive() and not batch.finished
    finally:
        batch.cancel()
        batch.wait(10)
        operators._ACTIVE_BATCH = None
        bpy.context.preferences.addons["prn_blender"].preferences.device = "auto"
    assert batch.cancelled and batch.fatal is None


def test_the_windowed_worker_check_runs_off_the_main_thread(fake_worker):
    from prn_blender.blender import preferences

    fake_worker("slowstart")
    thread = operators.start_worker_check(operators.get_client())
    assert thread is not threading.current_thread() and thread.is_alive()
    assert preferences.worker_check_text[0].startswith("Checking the worker")
    operators.shutdown_client()  # the slow start fails at once; the check reports it
    thread.join(10)
    assert not thread.is_alive()
    text = " ".join(preferences.worker_check_text)
    assert "The worker stopped during start-up" in text and "Log:" in text
    fake_worker("")
    operators.start_worker_check(operators.get_client()).join(30)
    assert "torch fake" in " ".join(preferences.worker_check_text)


class _Options:
    def __init__(self, repeat: bool) -> None:
        self.is_repeat, self.is_repeat_last = repeat, False


class _Properties:
    def is_property_set(self, name: str) -> bool:
        return name == "texture_size"


class _StandInImport:
    """The operator as Blender calls execute() on it, with a window (so a normal run would go
    modal) and, for redo, `options.is_repeat` (bpy.ops cannot set it headless)."""

    reconstruct_options = operators.PRN_OT_reconstruct_face.reconstruct_options
    finish = operators.PRN_OT_reconstruct_face.finish
    build = operators.PRN_OT_reconstruct_face.build

    def __init__(self, folder: Path, names: list[str], repeat: bool = False) -> None:
        from types import SimpleNamespace

        self.filepath, self.directory = "", str(folder)
        self.files = [SimpleNamespace(name=n) for n in names]
        self.options, self.properties = _Options(repeat), _Properties()
        self.texture_size, self.faces = 256, "largest"
        self.occlusion_mask, self.mirror_fill, self.averaging = False, True, True
        self.smoothing = 1.5
        self.landmarks, self.add_camera = True, False
        self.pose, self.mesh_resolution = "PHOTO", "1"
        self.reports: list[tuple[str, str]] = []

    def report(self, level: set[str], message: str) -> None:
        self.reports.append((next(iter(level)), message))


class _Windowed:
    """bpy.context with a window: what makes execute() go modal outside a redo."""

    def __init__(self) -> None:
        self.window = object()
        self.scene, self.view_layer = bpy.context.scene, bpy.context.view_layer
        self.preferences, self.screen = bpy.context.preferences, None


def test_adjust_last_operation_rebuilds_without_going_modal(fake_worker, photo):
    """Adjust Last Operation re-runs execute() after undoing the first run; it must finish in
    that call (a modal redo would build a second set of faces later). Scene-only changes
    reuse the last results (the worker is not asked); a changed texture size asks it."""
    assert bpy.ops.prn.reconstruct_face(filepath=str(photo), texture_size=256) == {"FINISHED"}
    name = bpy.context.view_layer.objects.active.name
    fake_worker("crash")  # any job sent to the worker now fails
    before = counts()
    redo = _StandInImport(photo.parent, [photo.name], repeat=True)
    redo.landmarks = False  # a scene option
    assert operators.PRN_OT_reconstruct_face.execute(redo, _Windowed()) == {"FINISHED"}
    assert counts()[0] == before[0] + 1  # the face, no landmark empties this time
    assert bpy.context.view_layer.objects.active.name != name  # a new object ("portrait.001")
    assert operators.active_batch() is None
    fake_worker("")
    redo = _StandInImport(photo.parent, [photo.name], repeat=True)
    redo.texture_size = 512
    assert operators.PRN_OT_reconstruct_face.execute(redo, _Windowed()) == {"FINISHED"}
    assert operators.active_batch() is None


def test_the_start_timeout_preference_reaches_the_worker_client():
    prefs = bpy.context.preferences.addons["prn_blender"].preferences
    assert prefs.start_timeout == 120
    prefs.start_timeout = 300
    try:
        assert operators.get_client().start_timeout_s == 300.0
    finally:
        prefs.start_timeout = 120
        operators.shutdown_client()
    assert operators.get_client().start_timeout_s == 120.0  # a changed setting, a new client


# ----------------------------------------------------------------- placement of several faces
def _smaller_face_elsewhere(face, shift_px: tuple[float, float], factor: float):
    """`face` shrunk by `factor` about its landmarks' centre and moved by `shift_px`: another
    person further back in the same photo (its metres_per_px is 1 / factor times larger)."""
    from dataclasses import replace

    centre = face.landmarks.mean(axis=0)
    shift = np.array([*shift_px, 0.0], dtype=np.float32)

    def move(points):
        return ((points - centre) * factor + centre + shift).astype(np.float32)

    return replace(face, vertices=move(face.vertices), landmarks=move(face.landmarks),
                   position_map=move(face.position_map))


def _camera_local(camera, obj) -> np.ndarray:
    """(68, 3) landmark empties of `obj` in `camera`'s frame."""
    bpy.context.view_layer.update()
    inverse = camera.matrix_world.inverted()
    return np.array([tuple(inverse @ e.matrix_world.translation)
                     for e in sorted((c for c in obj.children if c.type == "EMPTY"),
                                     key=lambda e: e["prn_landmark_index"])])


def test_faces_of_one_photo_sit_where_the_photo_shows_them(
        fake_worker, photo, synthetic_face, tmp_path, monkeypatch):
    """A photo with a second, smaller face: one camera for the photo, the second face's centre
    exactly where the photo shows it, each face at its own metric size (eyes 9 cm apart)."""
    second = _smaller_face_elsewhere(synthetic_face, (-60.0, 10.0), 0.5)
    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    synthetic_face.save_npz(paths[0])
    second.save_npz(paths[1])
    monkeypatch.setenv("FAKE_WORKER_RESULTS", os.pathsep.join(map(str, paths)))
    fake_worker("")
    assert bpy.ops.prn.reconstruct_face(filepath=str(photo), faces="all") == {"FINISHED"}
    first, other = bpy.data.objects["portrait"], bpy.data.objects["portrait_face2"]
    camera = scene.face_camera(first)
    assert camera is not None and scene.face_camera(other) is None  # one camera per photo
    s0 = synthetic_face.metres_per_px
    assert second.metres_per_px == pytest.approx(2 * s0)

    def in_frame(points_px):  # camera-frame X, Y of photo pixels (pixel centres)
        x = ((points_px[:, 0] + 0.5) / PHOTO_SIZE[0] - 0.5) * PHOTO_SIZE[0] * s0
        y = (0.5 - (points_px[:, 1] + 0.5) / PHOTO_SIZE[1]) * PHOTO_SIZE[1] * s0
        return np.stack([x, y], axis=1)

    np.testing.assert_allclose(_camera_local(camera, first)[:, :2],
                               in_frame(synthetic_face.landmarks), atol=1e-6)
    lm = _camera_local(camera, other)
    v = second.vertices
    box_centre_px = ((v[:, :2].min(axis=0) + v[:, :2].max(axis=0)) / 2)[None]
    world = np.array([tuple(other.matrix_world @ vert.co) for vert in other.data.vertices])
    local = np.array(camera.matrix_world.inverted(), dtype=np.float64)
    world_centre = (world.min(axis=0) + world.max(axis=0)) / 2
    centre_in_camera = local[:3, :3] @ world_centre + local[:3, 3]
    np.testing.assert_allclose(centre_in_camera[:2], in_frame(box_centre_px)[0], atol=1e-6)
    for obj, result in ((first, synthetic_face), (other, second)):
        eyes = _camera_local(camera, obj)[[36, 45]]
        assert np.linalg.norm(eyes[0] - eyes[1]) == pytest.approx(
            np.linalg.norm(result.landmarks[36, :2] - result.landmarks[45, :2])
            * result.metres_per_px, rel=1e-4)
    assert np.linalg.norm(lm[36] - lm[45]) == pytest.approx(0.09, rel=0.05)


def test_photos_of_one_import_are_laid_side_by_side(fake_worker, photo):
    second = photo.with_name("second.png")
    second.write_bytes(photo.read_bytes())
    assert bpy.ops.prn.reconstruct_face(
        directory=str(photo.parent), files=[{"name": photo.name}, {"name": second.name}]) == {
        "FINISHED"}
    a, b = bpy.data.objects["portrait"], bpy.data.objects["second"]
    bpy.context.view_layer.update()

    def x_range(obj):
        xs = [(obj.matrix_world @ v.co).x for v in obj.data.vertices]
        return min(xs), max(xs)

    assert x_range(b)[0] - x_range(a)[1] == pytest.approx(0.1, abs=1e-5)
    shift = x_range(b)[0] - x_range(a)[0]
    camera_a, camera_b = scene.face_camera(a), scene.face_camera(b)
    assert camera_b.location.x - camera_a.location.x == pytest.approx(shift, abs=1e-5)
    # each photo's camera still sees its face exactly over its photo
    np.testing.assert_allclose(_camera_local(camera_b, b), _camera_local(camera_a, a), atol=1e-6)
    assert bpy.context.scene.camera == camera_a


def test_faces_go_into_the_active_collection_and_textures_never_point_at_the_photo(
        fake_worker, photo):
    heads = bpy.data.collections.new("Heads")
    bpy.context.scene.collection.children.link(heads)
    view_layer = bpy.context.view_layer
    view_layer.active_layer_collection = view_layer.layer_collection.children["Heads"]
    try:
        assert bpy.ops.prn.reconstruct_face(filepath=str(photo)) == {"FINISHED"}
    finally:
        view_layer.active_layer_collection = view_layer.layer_collection
    assert "portrait" in heads.children
    obj = bpy.data.objects["portrait"]
    image = obj.data.materials[0].node_tree.nodes["Image Texture"].image
    # Unpacking writes //textures/portrait_texture.png: never the photo portrait.png beside
    # the .blend.
    assert image.filepath_raw == "//textures/portrait_texture.png"
    assert image.packed_file is not None
