"""Operators: Reconstruct Face (File > Import > Face from Photo, sidebar 'PRN'), cancel, check
the worker, create the worker environment.

The network runs in a worker process (inference/worker.py) through one `WorkerClient` per
Blender session (module registry below, restarted when dead or when the preferences change).
`ReconstructionBatch` runs the photos' jobs on a background thread; with an event loop the
operator polls it from a window-manager timer (progress in the status bar, ESC or the Cancel
button stops it), headless (`bpy.app.background`: timers never fire) `execute()` waits for it.
Faces are built into the scene only when every job has finished, in the operator's last call,
so one undo step removes them all. A worker fault mid-batch keeps the faces already finished.
Adjust Last Operation and Repeat Last run synchronously (Blender's redo cannot follow a modal
operator): they rebuild from the last batch's results when only scene options changed, else
wait for the worker.
"""

from __future__ import annotations

import json
import os
import textwrap
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    StringProperty,
)
from bpy_extras.io_utils import ImportHelper

from ..core.options import (
    ROTATION_AVERAGE_DEG,
    SMOOTHING_TEXELS,
    FaceSelection,
    ReconstructOptions,
)
from ..core.result import FaceResult
from ..errors import CancelledError, PhotoError, PrnError, WorkerError
from ..inference.client import WorkerClient
from . import preferences, scene, worker_env

IMAGE_GLOB = "*.jpg;*.jpeg;*.png;*.bmp;*.tif;*.tiff;*.webp"
IMAGE_EXTENSIONS = frozenset(e[1:] for e in IMAGE_GLOB.replace("*", "").split(";"))
POLL_INTERVAL_S = 0.1
DEFAULT_START_TIMEOUT_S = 120.0
"""Worker start-up (and, again, model load) limit when the add-on's preferences are absent."""
PHOTO_GAP_M = 0.1
"""Gap along X between the faces of consecutive photos of one import."""
CACHE_MAX_FACES = 16
"""Faces of the last batch kept for Adjust Last Operation (about 5-20 MB each)."""

FACE_ITEMS = (
    (FaceSelection.LARGEST.value, "Largest", "Only the largest face in each photo"),
    (FaceSelection.ALL.value, "All", "Every face found, one object each"),
)
POSE_ITEMS = (
    ("PHOTO", "Photo Pose", "Keep the head pose seen in the photo (overlays the photo)"),
    ("FRONTAL", "Frontal", "Undo the head rotation: the face looks along -Y, upright"),
)
RESOLUTION_ITEMS = (
    ("1", "Full", "Every texel of the 256 x 256 map: about 40k vertices"),
    ("2", "Half", "Every second texel: about 10k vertices"),
    ("4", "Quarter", "Every fourth texel: about 2.5k vertices"),
)


# ---------------------------------------------------------------------------- worker client
_CLIENT: WorkerClient | None = None
_CLIENT_KEY: tuple | None = None


def client_settings(context: bpy.types.Context | None = None) -> dict:
    """WorkerClient arguments from the preferences (defaults when the add-on is not enabled)."""
    prefs = preferences.addon_preferences(context)
    python = bpy.path.abspath(prefs.python_path) if prefs and prefs.python_path else None
    weights = bpy.path.abspath(prefs.weights_path) if prefs and prefs.weights_path else None
    return {
        "python": python or worker_env.default_python(),
        "device": prefs.device if prefs else "auto",
        "weights": weights,
        "start_timeout_s": float(prefs.start_timeout) if prefs else DEFAULT_START_TIMEOUT_S,
    }


def get_client(context: bpy.types.Context | None = None) -> WorkerClient:
    """The session's worker client, replaced when the preferences changed or it died (the
    worker itself starts on the first job)."""
    global _CLIENT, _CLIENT_KEY
    settings = client_settings(context)
    key = tuple(sorted(settings.items()))
    if _CLIENT is not None and (key != _CLIENT_KEY or (_CLIENT.info and not _CLIENT.is_alive())):
        shutdown_client()
    if _CLIENT is None:
        _CLIENT = WorkerClient(**settings)
        _CLIENT_KEY = key
    return _CLIENT


def prewarm_worker(context: bpy.types.Context | None = None) -> threading.Thread | None:
    """Start the worker on a background thread while the artist is still choosing a photo, so
    its start-up (Python + torch import + weights, several seconds) is mostly over by the time
    they click Import. Failures are silent here: the reconstruction itself starts the worker
    again and reports them. None when the worker already runs or a batch is using it (never
    replace the client under a running batch)."""
    if _ACTIVE_BATCH is not None and not _ACTIVE_BATCH.finished:
        return None
    client = get_client(context)
    if client.is_alive() and client.info:
        return None

    def start() -> None:
        try:
            client.start()
        except Exception:  # reported by the real start in the batch
            pass

    thread = threading.Thread(target=start, name="prn-prewarm", daemon=True)
    thread.start()
    return thread


def shutdown_client() -> None:
    """Stop the session's worker (unregister, preference changes, tests)."""
    global _CLIENT, _CLIENT_KEY
    if _CLIENT is not None:
        _CLIENT.shutdown()
    _CLIENT, _CLIENT_KEY = None, None


# ---------------------------------------------------------------------------- batch of jobs
@dataclass
class PhotoOutcome:
    """What one photo gave: faces, or the error to report."""

    photo: str
    faces: list[FaceResult] = field(default_factory=list)
    error: PrnError | None = None
    info: dict = field(default_factory=dict)


class ReconstructionBatch:
    """Reconstructs photos one after another on a background thread (starting the worker may
    take seconds: never on Blender's main thread). `poll` and `cancel` never block."""

    def __init__(self, client: WorkerClient, photos: list[str],
                 options: ReconstructOptions) -> None:
        self.client = client
        self.photos = list(photos)
        self.options = options
        self.outcomes: list[PhotoOutcome] = []
        self.cancelled = False
        self.fatal: PrnError | None = None
        """A worker-level failure (start-up, crash): stops the batch."""
        self._job = None
        self._starting = False
        self._lock = threading.Lock()
        self._message = "Starting the worker"
        self._thread = threading.Thread(target=self._run, name="prn-batch", daemon=True)

    def start(self) -> ReconstructionBatch:
        self._thread.start()
        return self

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the batch ends (headless path); True if it ended."""
        self._thread.join(timeout_s)
        return self.finished

    def cancel(self) -> None:
        """Stop the batch: cancels the running job, or, while the worker is still starting
        (up to the start timeout), stops the worker so the batch ends at once."""
        with self._lock:
            self.cancelled = True
            job, starting = self._job, self._starting
        if job is not None:
            job.cancel()
        elif starting:
            threading.Thread(target=self.client.shutdown, name="prn-cancel-start",
                             daemon=True).start()

    def poll(self) -> tuple[float, str]:
        """(fraction 0..1 over all photos, status text)."""
        with self._lock:
            job, done = self._job, len(self.outcomes)
            message = self._message
        fraction = 0.0
        if job is not None:
            status = job.poll()
            fraction, message = status.progress, status.message or message
        total = max(len(self.photos), 1)
        name = Path(self.photos[min(done, total - 1)]).name if self.photos else ""
        return (done + fraction) / total, f"{name}: {message}" if name else message

    def _run(self) -> None:
        try:
            with self._lock:
                self._starting = not self.cancelled
            if self._starting:
                self.client.start()
            with self._lock:
                self._starting = False
            for photo in self.photos:
                if self.cancelled:
                    break
                outcome = PhotoOutcome(photo)
                job = self.client.submit(photo, self.options)
                with self._lock:
                    self._job = job
                    if self.cancelled:
                        job.cancel()
                try:
                    outcome.faces = job.result()
                    outcome.info = dict(job.info)
                except CancelledError:
                    if self.cancelled:
                        break
                    raise WorkerError("The worker dropped the job; run it again.") from None
                except WorkerError:
                    raise
                except PrnError as error:  # this photo only (no face, unreadable...)
                    outcome.error = error
                with self._lock:
                    self._job = None
                    self.outcomes.append(outcome)
        except PrnError as error:
            if not self.cancelled:  # a start stopped by `cancel` is not a fault
                self.fatal = error
        except Exception as error:  # a bug: keep the traceback, tell the artist
            traceback.print_exc()
            self.fatal = WorkerError(f"Internal error ({type(error).__name__}: {error}); see the "
                                     "system console.")
        finally:
            with self._lock:
                self._job = None
                self._starting = False


@dataclass
class FinishedBatch:
    """A batch's outcomes without a worker behind them (a redo rebuilding the last results)."""

    photos: list[str]
    outcomes: list[PhotoOutcome]
    cancelled: bool = False
    fatal: PrnError | None = None


# ---------------------------------------------------------------------------- operators
_ACTIVE_BATCH: ReconstructionBatch | None = None
"""The batch a modal Reconstruct Face runs (the Cancel button and the panel use it)."""


def active_batch() -> ReconstructionBatch | None:
    return _ACTIVE_BATCH


_LAST_RESULTS: tuple[tuple, list[PhotoOutcome]] | None = None
"""(key, outcomes) of the last finished batch, for Adjust Last Operation: the key is the
photos, the reconstruction options and the worker settings that made the outcomes."""


def _results_key(photos: list[str], options: ReconstructOptions, settings: dict) -> tuple:
    return (tuple(photos), json.dumps(options.to_dict(), sort_keys=True),
            tuple(sorted(settings.items())))


def remember_results(key: tuple, outcomes: list[PhotoOutcome]) -> None:
    """Keep a finished batch's outcomes for a redo (small batches only: they hold textures)."""
    global _LAST_RESULTS
    faces = sum(len(o.faces) for o in outcomes)
    _LAST_RESULTS = (key, outcomes) if faces <= CACHE_MAX_FACES else None


def remembered_results(key: tuple) -> list[PhotoOutcome] | None:
    return _LAST_RESULTS[1] if _LAST_RESULTS is not None and _LAST_RESULTS[0] == key else None


def photo_paths(filepath: str, directory: str, files: list[str]) -> list[str]:
    """Absolute photo paths from the file browser's selection (multi-file) or `filepath`."""
    names = [name for name in files if name]
    if names and directory:
        return [os.path.join(bpy.path.abspath(directory), name) for name in names]
    return [bpy.path.abspath(filepath)] if filepath else []


def check_photo(path: str) -> None:
    """Fail fast, before starting any worker, for paths that cannot be photos."""
    if not os.path.isfile(path):
        raise PhotoError(f"The photo '{path}' does not exist. Choose an existing image file.")
    if Path(path).suffix.lower().lstrip(".") not in IMAGE_EXTENSIONS:
        raise PhotoError(f"'{Path(path).name}' is not a supported image "
                         f"({IMAGE_GLOB.replace('*', '')}). Choose a photo.")


def face_names(photo: str, count: int) -> list[str]:
    """Object names: the photo's name, then '<name>_face2', ... for further faces."""
    stem = scene.photo_stem(photo)
    return [stem if i == 0 else f"{stem}_face{i + 1}" for i in range(count)]


class PRN_OT_reconstruct_face(bpy.types.Operator, ImportHelper):
    """Reconstruct a textured 3D face mesh (with 68 landmarks) from each chosen photo"""

    bl_idname = "prn.reconstruct_face"
    bl_label = "Face from Photo"
    bl_description = "Reconstruct textured 3D faces with landmarks from photos (PRNet)"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012 (Blender reads a set)

    filter_glob: StringProperty(default=IMAGE_GLOB, options={"HIDDEN"})
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    files: CollectionProperty(
        name="Photos", description="Photos to reconstruct (several may be selected)",
        type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})

    texture_size: IntProperty(
        name="Texture Size",
        description="Side of the face texture sampled from the photo, in pixels "
                    "(default: the add-on preference)",
        default=1024, min=256, max=4096, subtype="PIXEL")
    faces: EnumProperty(
        name="Faces", description="Which faces to reconstruct when a photo shows several",
        items=FACE_ITEMS, default=FaceSelection.LARGEST.value)
    occlusion_mask: BoolProperty(
        name="Occlusion Mask",
        description="Black out texture areas the camera could not see (with Mirror Fill: "
                    "nor their mirror image), and add that mask as an image node",
        default=False)
    mirror_fill: BoolProperty(
        name="Mirror Fill",
        description="Texture the side of the face the photo does not show (a turned head's "
                    "far cheek) from its mirror image, instead of smearing the photo across it",
        default=True)
    landmarks: BoolProperty(
        name="Landmark Empties",
        description="Add 68 empties named by landmark (jaw, brows, nose, eyes, mouth), "
                    "parented to the face",
        default=True)
    pose: EnumProperty(
        name="Pose", description="Keep the head pose of the photo or turn the face frontal",
        items=POSE_ITEMS, default="PHOTO")
    add_camera: BoolProperty(
        name="Add Camera",
        description="Add an orthographic camera with the photo as background, matching the "
                    "estimated pose, and make it the scene camera",
        default=True)
    mesh_resolution: EnumProperty(
        name="Mesh Resolution", description="Vertex density of the face mesh",
        items=RESOLUTION_ITEMS, default="1")
    smoothing: FloatProperty(
        name="Surface Smoothing",
        description="Gaussian smoothing of the reconstructed surface, in texels of the "
                    "network's output (0 = the raw output); the landmarks sit on the "
                    "smoothed surface",
        default=SMOOTHING_TEXELS, min=0.0, max=8.0, step=25, precision=2)
    averaging: BoolProperty(
        name="Average Views",
        description="Also run the network on mirrored and slightly turned copies of the face "
                    "and average the surfaces: closer landmarks and shape, about ten times the "
                    "network time (off: a quick preview)",
        default=True)

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        for name in ("texture_size", "faces", "mirror_fill", "occlusion_mask", "landmarks",
                     "pose", "add_camera", "mesh_resolution", "smoothing", "averaging"):
            layout.prop(self, name)

    def reconstruct_options(self, context: bpy.types.Context) -> ReconstructOptions:
        texture_size = self.texture_size
        prefs = preferences.addon_preferences(context)
        if prefs is not None and not self.properties.is_property_set("texture_size"):
            texture_size = prefs.texture_size
        return ReconstructOptions(faces=FaceSelection(self.faces), texture_size=texture_size,
                                  occlusion_mask=self.occlusion_mask,
                                  mirror_fill=self.mirror_fill,
                                  mirror_average=self.averaging,
                                  rotation_average_deg=ROTATION_AVERAGE_DEG if self.averaging
                                  else 0.0,
                                  smoothing=float(self.smoothing))

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        prewarm_worker(context)
        return ImportHelper.invoke(self, context, event)  # opens the file browser

    def execute(self, context: bpy.types.Context) -> set[str]:
        global _ACTIVE_BATCH
        photos = photo_paths(self.filepath, self.directory, [f.name for f in self.files])
        if not photos:
            self.report({"ERROR"}, "No photo chosen. Pick one or more image files.")
            return {"CANCELLED"}
        try:
            for photo in photos:
                check_photo(photo)
            if _ACTIVE_BATCH is not None and not _ACTIVE_BATCH.finished:
                raise WorkerError("A reconstruction is already running; wait for it or cancel "
                                  "it (Esc, or Cancel in the PRN sidebar tab).")
            options = self.reconstruct_options(context)
            key = _results_key(photos, options, client_settings(context))
            repeat = self.options.is_repeat or self.options.is_repeat_last
            if repeat and (outcomes := remembered_results(key)) is not None:
                # Adjust Last Operation changed scene options only: rebuild, no worker.
                return self.finish(context, FinishedBatch(photos, outcomes), key)
            batch = ReconstructionBatch(get_client(context), photos, options)
        except (PrnError, ValueError) as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        batch.start()
        if bpy.app.background or context.window is None or repeat:
            # No event loop (timers would never fire), or a redo, which must end in this call.
            batch.wait()
            return self.finish(context, batch, key)
        self._results_key = key
        _ACTIVE_BATCH = batch
        wm = context.window_manager
        self._timer = wm.event_timer_add(POLL_INTERVAL_S, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        batch = _ACTIVE_BATCH
        if batch is None:
            return self._end_modal(context, {"CANCELLED"})
        if event.type == "ESC" and event.value == "PRESS":
            batch.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        fraction, message = batch.poll()
        context.window_manager.progress_update(int(100 * fraction))
        if context.workspace is not None:
            context.workspace.status_text_set(
                f"PRN: {message} ({100 * fraction:.0f} %). Esc to cancel")
        for area in context.screen.areas if context.screen else ():
            if area.type == "VIEW_3D":
                area.tag_redraw()
        if not batch.finished:
            return {"RUNNING_MODAL"}
        return self._end_modal(context, self.finish(context, batch,
                                                    getattr(self, "_results_key", None)))

    def _end_modal(self, context: bpy.types.Context, result: set[str]) -> set[str]:
        global _ACTIVE_BATCH
        _ACTIVE_BATCH = None
        wm = context.window_manager
        if getattr(self, "_timer", None) is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        return result

    def finish(self, context: bpy.types.Context, batch: ReconstructionBatch | FinishedBatch,
               results_key: tuple | None = None) -> set[str]:
        """Build every face of a finished batch (all or nothing) and report. A worker fault
        (crash, hang) keeps the photos finished before it: they are built, the fault is
        reported, and the photos after it are named."""
        if batch.cancelled:
            self.report({"WARNING"}, "Face reconstruction cancelled; nothing was added.")
            return {"CANCELLED"}
        failures = [o for o in batch.outcomes if o.error is not None]
        successes = [o for o in batch.outcomes if o.error is None and o.faces]
        if batch.fatal is not None:
            if not successes:
                self.report({"ERROR"}, str(batch.fatal))
                return {"CANCELLED"}
            left = [Path(p).name for p in batch.photos[len(batch.outcomes):]]
            named = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            self.report({"WARNING"}, f"{batch.fatal} Not reconstructed: {named}.")
        elif results_key is not None:
            remember_results(results_key, batch.outcomes)
        for outcome in failures:
            level = "ERROR" if not successes else "WARNING"
            self.report({level}, str(outcome.error))
        if not successes:
            if not failures:
                self.report({"ERROR"}, "No face was reconstructed. Try a closer, frontal photo.")
            return {"CANCELLED"}
        try:
            built = self.build(context, successes)
        except Exception as error:  # a bug: the scene is already rolled back
            traceback.print_exc()
            self.report({"ERROR"}, f"Building the face failed ({type(error).__name__}: "
                                   f"{error}); nothing was added. See the system console.")
            return {"CANCELLED"}
        if any(o.info.get("trained") is False for o in successes):
            self.report({"WARNING"}, "The worker's weights are untrained: the shapes are "
                                     "meaningless. Choose trained weights in the preferences.")
        names = ", ".join(obj.name for obj in built)
        self.report({"INFO"}, f"Reconstructed {len(built)} face(s): {names}")
        return {"FINISHED"}

    def build(self, context: bpy.types.Context, outcomes: list[PhotoOutcome]) -> list:
        """All faces into the active collection; on any failure the faces built so far are
        removed. The faces of one photo are placed at its first face's scale (each where the
        photo shows it) with one camera per photo; photos are laid side by side along X,
        10 cm apart, the first one on the world Y axis."""
        built: list[bpy.types.Object] = []
        layer_collection = getattr(context.view_layer, "active_layer_collection", None)
        collection = layer_collection.collection if layer_collection is not None else None
        if collection is not None and (collection.library is not None
                                       or collection.override_library is not None):
            collection = None  # linked from another file: not editable; the scene's instead
        frontal = self.pose == "FRONTAL"
        right_edge_m = None
        try:
            for outcome in outcomes:
                photo_scale = outcome.faces[0].metres_per_px
                low, high = scene.photo_extent_x_m(outcome.faces, frontal=frontal)
                shift = 0.0 if right_edge_m is None else right_edge_m + PHOTO_GAP_M - low
                right_edge_m = high + shift
                for index, (result, name) in enumerate(zip(
                        outcome.faces, face_names(outcome.photo, len(outcome.faces)),
                        strict=True)):
                    built.append(scene.build_face_object(
                        result, name, landmarks=self.landmarks,
                        camera=self.add_camera and index == 0, photo_path=outcome.photo,
                        frontal=frontal, stride=int(self.mesh_resolution),
                        scene=context.scene, collection=collection,
                        photo_metres_per_px=photo_scale, offset_m=(shift, 0.0, 0.0)))
        except BaseException:
            for obj in built:
                scene.remove_face_object(obj)
            raise
        for obj in context.view_layer.objects.selected:
            obj.select_set(False)
        for obj in built:
            obj.select_set(True)
        context.view_layer.objects.active = built[-1]
        camera = scene.face_camera(built[0]) if self.add_camera else None
        if camera is not None:
            scene.set_scene_camera(context.scene, camera)
        if not bpy.app.background and context.screen is not None:
            for area in context.screen.areas:
                if area.type == "VIEW_3D":
                    for space in area.spaces:
                        if space.type == "VIEW_3D":
                            space.shading.type = "MATERIAL"
        return built


class PRN_OT_cancel_reconstruction(bpy.types.Operator):
    """Stop the running face reconstruction; nothing is added to the scene"""

    bl_idname = "prn.cancel_reconstruction"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}  # noqa: RUF012 (Blender reads a set)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _ACTIVE_BATCH is not None and not _ACTIVE_BATCH.finished

    def execute(self, context: bpy.types.Context) -> set[str]:
        if _ACTIVE_BATCH is not None:
            _ACTIVE_BATCH.cancel()
        return {"FINISHED"}


def worker_check_lines(client: WorkerClient) -> tuple[bool, list[str]]:
    """(worker ok, lines for the preferences): starts the worker if needed (may block up to
    the start timeout: call it off Blender's main thread when a window is open)."""
    try:
        info = client.start()
    except PrnError as error:  # one label per line in the preferences: wrap, don't clip
        return False, textwrap.wrap(str(error), 90)[:6]
    return True, [
        f"Python: {info.get('python')}",
        f"torch {info.get('torch')}, OpenCV {info.get('opencv')}, device {info.get('device')}",
        f"Weights: {info.get('weights')} ({'trained' if info.get('trained') else 'UNTRAINED'})",
    ]


_CHECK_THREAD: threading.Thread | None = None


def start_worker_check(client: WorkerClient) -> threading.Thread:
    """Check the worker on a background thread; its lines replace
    `preferences.worker_check_text` when it ends (a timer redraws the preferences)."""
    global _CHECK_THREAD

    def run() -> None:
        _, lines = worker_check_lines(client)
        preferences.worker_check_text[:] = lines
        print("prn-blender: worker check:", " | ".join(lines))

    preferences.worker_check_text[:] = ["Checking the worker (a first start may take a while)"]
    _CHECK_THREAD = threading.Thread(target=run, name="prn-check-worker", daemon=True)
    _CHECK_THREAD.start()
    return _CHECK_THREAD


def _redraw_preferences() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()


def _watch_check() -> float | None:
    """Timer: redraw the preferences until the worker check has ended."""
    _redraw_preferences()
    return 0.25 if _CHECK_THREAD is not None and _CHECK_THREAD.is_alive() else None


class PRN_OT_check_worker(bpy.types.Operator):
    """Start the worker if needed and report its interpreter, torch version, device and
    weights"""

    bl_idname = "prn.check_worker"
    bl_label = "Check Worker"
    bl_options = {"INTERNAL"}  # noqa: RUF012 (Blender reads a set)

    def execute(self, context: bpy.types.Context) -> set[str]:
        if _ACTIVE_BATCH is not None and not _ACTIVE_BATCH.finished:
            # get_client would replace (stop) the worker under the batch if a preference
            # changed; and the batch's results say how the worker is doing anyway.
            self.report({"ERROR"}, "A face reconstruction is running; check the worker when it "
                                   "has finished (or cancel it).")
            return {"CANCELLED"}
        if _CHECK_THREAD is not None and _CHECK_THREAD.is_alive():
            self.report({"INFO"}, "The worker check is still running.")
            return {"CANCELLED"}
        client = get_client(context)
        if not bpy.app.background and context.window is not None:
            # Starting the worker can take up to the start timeout: never on the UI thread.
            start_worker_check(client)
            bpy.app.timers.register(_watch_check, first_interval=0.25)
            self.report({"INFO"}, "Checking the worker; the result appears in the preferences.")
            return {"FINISHED"}
        ok, lines = worker_check_lines(client)
        preferences.worker_check_text[:] = lines
        if not ok:
            self.report({"ERROR"}, " ".join(lines))
            return {"CANCELLED"}
        self.report({"INFO"}, " | ".join(lines))
        return {"FINISHED"}


class PRN_OT_create_worker_env(bpy.types.Operator):
    """Create a virtual environment for the worker and install torch and OpenCV into it with
    pip (downloads about 1 GB; needs online access)"""

    bl_idname = "prn.create_worker_env"
    bl_label = "Create Worker Environment"
    bl_options = {"INTERNAL"}  # noqa: RUF012 (Blender reads a set)

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = preferences.addon_preferences(context)
        base = (bpy.path.abspath(prefs.base_python) if prefs and prefs.base_python
                else worker_env.default_base_python())
        device = prefs.device if prefs else "auto"
        try:
            installer = worker_env.start_install(base, bpy.app.online_access,
                                                 cpu_only=device != "cuda")
        except PrnError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        bpy.app.timers.register(lambda: _watch_install(installer), first_interval=0.5)
        self.report({"INFO"}, f"Installing the worker environment in {installer.venv_dir}")
        return {"FINISHED"}


def _watch_install(installer: worker_env.WorkerEnvInstaller) -> float | None:
    """Timer: redraw the preferences while installing; point the preference at the new venv."""
    _redraw_preferences()
    if installer.state.running:
        return 0.5
    prefs = preferences.addon_preferences()
    if prefs is not None and installer.state.python and not installer.state.error:
        prefs.python_path = installer.state.python
    return None


def menu_func_import(self: bpy.types.Menu, context: bpy.types.Context) -> None:
    self.layout.operator(PRN_OT_reconstruct_face.bl_idname, text="Face from Photo")


classes = (
    PRN_OT_reconstruct_face,
    PRN_OT_cancel_reconstruction,
    PRN_OT_check_worker,
    PRN_OT_create_worker_env,
)
