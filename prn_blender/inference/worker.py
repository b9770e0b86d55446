"""The background inference worker: one process, one warm model, JSON lines on stdin/stdout.

Started by `client.WorkerClient` as a script (``python /path/to/prn_blender/inference/worker.py
--tmpdir DIR``) with an interpreter that has torch and OpenCV. It puts the package's parent
folder on sys.path itself and imports the package as `prn_blender`, so it works the same when
Blender imported the add-on as ``bl_ext.<repo>.prn_blender``.

Protocol (version `PROTOCOL`): every message is one JSON object on one line with
``{"protocol": 1, "id": <request id or null>, "type": ...}``.

Worker -> client, unsolicited: ``hello`` (python, versions, pid) once the imports worked, or
``error`` with a DependencyError and exit code 3 when torch / OpenCV / numpy are missing.

Requests (client -> worker) and their replies:
* ``ping`` -> ``pong`` {python, torch, opencv, device, weights, layout_id, trained, threads, busy}
* ``load`` {weights, device, threads, allow_untrained} -> ``loaded`` (same fields as pong)
* ``reconstruct`` {photo, options (ReconstructOptions.to_dict())} -> zero or more ``progress``
  {progress 0..1, message}, then ``result`` {files: [.npz per face], device, trained,
  seconds} or ``error`` or ``cancelled``. Jobs run one at a time, in order, on a job thread, so
  pings and cancels are answered while a job runs.
* ``cancel`` {job} -> the job ends with ``cancelled`` (a queued job at once, a running one at
  its next stage); the cancel itself is not answered.
* ``shutdown`` -> ``bye``, then the process exits.
Errors: ``error`` {error: {"type": <PrnError class>, "message": str}} (errors.error_to_dict).
Malformed lines and protocol mismatches get an ``error`` (WorkerError) and the worker carries
on. Result arrays go to ``<tmpdir>/<job id>-<face>.npz`` (FaceResult.save_npz); the client
deletes them once read. Anything printed by libraries goes to stderr (the client's log file),
never into the protocol stream.

Test-only fault injection: $PRN_BLENDER_WORKER_FAULT = "hang" (a reconstruct never answers),
"slow" (each reconstruct stage sleeps 0.5 s, so a test can kill or cancel mid-job),
"protocol" (announce protocol 999).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path

PROTOCOL = 1
FAULT_ENV = "PRN_BLENDER_WORKER_FAULT"
EXIT_DEPENDENCY = 3
MIN_PYTHON = (3, 11)


def _fix_sys_path() -> None:
    """Make `import prn_blender` find this copy of the package, whatever imported it."""
    script_dir = str(Path(__file__).resolve().parent)
    package_parent = str(Path(__file__).resolve().parents[2])
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != Path(script_dir)]
    if package_parent not in sys.path:
        sys.path.insert(0, package_parent)


class _Channel:
    """The protocol stream: the real stdout, written one whole line at a time under a lock."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, type_: str, id_: str | None = None, **fields) -> None:
        message = {"protocol": PROTOCOL, "id": id_, "type": type_, **fields}
        line = json.dumps(message, ensure_ascii=True) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                os._exit(0)  # the client is gone: nobody left to answer


def _missing_dependencies() -> tuple[list[str], list[str]]:
    """(pip names of the packages this interpreter lacks, 'package: error' for those that are
    installed but fail to import: a broken or mismatched build, e.g. a DLL that will not load;
    each also printed with its traceback to stderr, the worker log)."""
    missing, broken = [], []
    for module, package in (("numpy", "numpy<2"), ("cv2", "opencv-python-headless"),
                            ("torch", "torch"), ("safetensors", "safetensors")):
        try:
            __import__(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # the package is there; something it needs is not
                broken.append(f"{package}: {type(error).__name__}: {error}")
                traceback.print_exc(file=sys.stderr)
            else:
                missing.append(package)
        except Exception as error:
            broken.append(f"{package}: {type(error).__name__}: {error}")
            traceback.print_exc(file=sys.stderr)
    return missing, broken


def _dependency_message() -> str | None:
    """None if this interpreter can run the worker, else the artist-facing sentence."""
    if sys.version_info[:2] < MIN_PYTHON:
        return (
            f"The worker Python '{sys.executable}' is Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}; prn-blender needs Python "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer with torch and OpenCV. Choose another "
            "interpreter in the add-on preferences (or let the add-on create its environment)."
        )
    missing, broken = _missing_dependencies()
    sentences = []
    if missing:
        sentences.append(
            f"The worker Python '{sys.executable}' lacks {', '.join(missing)}. Install them in "
            f"that environment (`{sys.executable} -m pip install {' '.join(missing)}`) or "
            "choose a Python that has them in the add-on preferences.")
    if broken:
        sentences.append(
            f"In the worker Python '{sys.executable}' these packages are installed but fail to "
            f"import ({'; '.join(broken)}). Reinstall them in that environment (pip install "
            "--force-reinstall) or choose another Python in the add-on preferences.")
    return " ".join(sentences) or None


class Worker:
    """Request loop (main thread) + job loop (job thread) around one `Reconstructor`."""

    def __init__(self, channel: _Channel, tmpdir: Path) -> None:
        self.channel = channel
        self.tmpdir = tmpdir
        self.fault = os.environ.get(FAULT_ENV, "")
        self.reconstructor = None
        self.load_error = None
        self.jobs: queue.Queue = queue.Queue()
        self.cancelled: set[str] = set()
        self.current_job: str | None = None
        self.lock = threading.Lock()
        self.job_thread = threading.Thread(target=self._job_loop, name="prn-job", daemon=True)

    # ------------------------------------------------------------------ info
    def info(self) -> dict:
        import cv2
        import torch

        r = self.reconstructor
        return {
            "python": sys.executable,
            "python_version": ".".join(str(v) for v in sys.version_info[:3]),
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "pid": os.getpid(),
            "loaded": r is not None,
            "device": None if r is None else r.device_name,
            "weights": None if r is None else str(r.weights_path),
            "layout_id": None if r is None else r.layout.layout_id,
            "trained": None if r is None else r.trained,
            "threads": torch.get_num_threads(),
            "busy": self.current_job is not None,
        }

    # ------------------------------------------------------------------ requests
    def handle(self, line: str) -> bool:
        """Handle one request line; False once the worker should exit."""
        from prn_blender.errors import WorkerError

        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            self._error(None, WorkerError(
                f"The worker received a malformed message ({error}): {line[:80]!r}. "
                "This is a bug in the caller; the worker carries on."))
            return True
        id_ = message.get("id")
        id_ = None if id_ is None else str(id_)
        if message.get("protocol") != PROTOCOL:
            self._error(id_, WorkerError(
                f"Protocol mismatch: the request speaks protocol {message.get('protocol')!r}, "
                f"this worker speaks {PROTOCOL}. Update the add-on and the worker together."))
            return True
        kind = message.get("type")
        if kind == "ping":
            self.channel.send("pong", id_, **self.info())
        elif kind == "load":
            self._load(id_, message)
        elif kind == "reconstruct":
            self.jobs.put((id_, message))
        elif kind == "cancel":
            with self.lock:
                self.cancelled.add(str(message.get("job")))
        elif kind == "shutdown":
            self.channel.send("bye", id_)
            return False
        else:
            self._error(id_, WorkerError(
                f"Unknown request type {kind!r}; this worker knows ping, load, reconstruct, "
                "cancel and shutdown."))
        return True

    def _error(self, id_: str | None, error: BaseException) -> None:
        from prn_blender.errors import PrnError, WorkerError, error_to_dict

        if not isinstance(error, PrnError):
            traceback.print_exception(error, file=sys.stderr)
            error = WorkerError(
                f"The worker hit an internal error ({type(error).__name__}: {error}). "
                "This is a bug; the worker log has the details.")
        self.channel.send("error", id_, error=error_to_dict(error))

    def _load(self, id_: str | None, message: dict) -> None:
        from prn_blender.inference.reconstructor import Reconstructor

        try:
            # Replacing a loaded model waits for the running job (the job loop holds no lock
            # on the model, but a job captured the old reference and finishes with it).
            self.reconstructor = Reconstructor(
                weights=message.get("weights"),
                device=message.get("device") or "auto",
                threads=message.get("threads"),
                allow_untrained=bool(message.get("allow_untrained", True)),
            )
            self.reconstructor.warm_up()
        except BaseException as error:
            self._error(id_, error)
            return
        self.channel.send("loaded", id_, **self.info())

    # ------------------------------------------------------------------ jobs
    def _job_loop(self) -> None:
        while True:
            id_, message = self.jobs.get()
            with self.lock:
                if id_ in self.cancelled:
                    self.cancelled.discard(id_)
                    self.channel.send("cancelled", id_)
                    continue
                self.current_job = id_
            try:
                self._reconstruct(id_, message)
            except BaseException as error:
                from prn_blender.errors import CancelledError

                if isinstance(error, CancelledError):
                    self.channel.send("cancelled", id_)
                else:
                    self._error(id_, error)
            finally:
                with self.lock:
                    self.current_job = None
                    self.cancelled.discard(id_)

    def _reconstruct(self, id_: str, message: dict) -> None:
        from prn_blender.core.options import ReconstructOptions
        from prn_blender.errors import CancelledError, PrnError, WeightsError

        if self.fault == "hang":
            while True:
                time.sleep(3600)
        if self.reconstructor is None:
            raise WeightsError("The worker has no model loaded yet: send 'load' first.")
        try:
            options = ReconstructOptions.from_dict(dict(message.get("options") or {}))
        except (TypeError, ValueError) as error:
            raise PrnError(f"Invalid reconstruction options: {error}.") from error
        photo = message.get("photo")
        if not isinstance(photo, str):
            raise PrnError("The reconstruct request has no photo path.")

        def progress(fraction: float, text: str) -> None:
            with self.lock:
                if id_ in self.cancelled:
                    raise CancelledError("The reconstruction was cancelled.")
            if self.fault == "slow":
                time.sleep(0.5)
            self.channel.send("progress", id_, progress=round(float(fraction), 4), message=text)

        start = time.perf_counter()
        results = self.reconstructor.reconstruct(photo, options=options, progress=progress)
        progress(0.97, "Writing results")
        files = []
        for index, result in enumerate(results):
            path = self.tmpdir / f"{id_}-{index}.npz"
            tmp = path.with_name(path.name + ".part")
            result.save_npz(tmp)
            os.replace(tmp, path)
            files.append(str(path))
        self.channel.send(
            "result", id_, files=files, device=self.reconstructor.device_name,
            trained=self.reconstructor.trained, seconds=round(time.perf_counter() - start, 4),
        )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="prn-blender inference worker (JSON lines).")
    parser.add_argument("--tmpdir", required=True, help="folder for result .npz files")
    args = parser.parse_args(argv)

    channel = _Channel(sys.stdout)
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol
    _fix_sys_path()
    problem = _dependency_message()
    if problem is not None:
        channel.send("error", None, error={"type": "DependencyError", "message": problem})
        return EXIT_DEPENDENCY
    import warnings

    warnings.simplefilter("default")
    tmpdir = Path(args.tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    worker = Worker(channel, tmpdir)
    hello = {"python": sys.executable, "pid": os.getpid()}
    try:
        import cv2
        import torch

        hello.update(torch=torch.__version__, opencv=cv2.__version__)
    except Exception as error:
        channel.send("error", None, error={"type": "DependencyError", "message": str(error)})
        return EXIT_DEPENDENCY
    protocol = 999 if worker.fault == "protocol" else PROTOCOL
    channel.send("hello", None, protocol=protocol, **hello)
    worker.job_thread.start()
    for raw in iter(sys.stdin.buffer.readline, b""):
        line = raw.decode("utf-8", errors="replace").strip()
        if line and not worker.handle(line):
            return 0
    # stdin closed without a shutdown: the client is gone (Blender quit or crashed), so nobody
    # will collect the result files.
    import shutil

    shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
