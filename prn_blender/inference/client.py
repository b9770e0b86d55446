"""Talk to the background inference worker (worker.py) from Blender or any Python.

Imports only the standard library, numpy and prn_blender's errors / options / result modules:
Blender imports this module, and Blender's Python has neither torch nor OpenCV.

    client = WorkerClient("/path/to/venv/bin/python")   # an interpreter with torch + OpenCV
    info = client.start()                               # spawn, import, load the model once
    job = client.submit("face.jpg", ReconstructOptions())
    status = job.poll()                                 # never blocks (Blender timers)
    faces = job.result()                                # blocks; raises the worker's PrnError
    client.shutdown()

A reader thread consumes the worker's stdout, so `Job.poll` never waits. The worker's stderr
goes to a log file (`WorkerClient.log_path`) named in every crash message. Each client has its
own worker process and its own temporary folder for result files; job ids are random, so two
clients never see each other's jobs. Faults end in a `WorkerError` within a bounded time: the
worker exits or is killed (at once), hangs (`job_timeout_s` without a message: it is stopped),
fails to start (`start_timeout_s`), or speaks another protocol. `start()` (or the next
`submit()`) starts a fresh worker after a fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.options import ReconstructOptions
from ..core.result import FaceResult
from ..errors import (
    CancelledError,
    DependencyError,
    PrnError,
    WorkerError,
    error_from_dict,
)

PROTOCOL = 1
"""Version of the JSON-lines protocol (worker.PROTOCOL must match)."""
WORKER_SCRIPT = Path(__file__).resolve().with_name("worker.py")
PYTHON_ENV = "PRN_BLENDER_PYTHON"
"""Default worker interpreter when none is given (else this process's own interpreter)."""
TEMP_ROOT_NAME = "prn_blender"
STALE_DIR_AGE_S = 24 * 3600.0
"""On systems without a cheap process-alive check (Windows), job folders older than this are
removed at start-up."""
KEEP_LOGS = 10
SHUTDOWN_WAIT_S = 5.0
PING_TIMEOUT_S = 10.0

JOB_STATES = ("running", "done", "failed", "cancelled")


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of a job. state: "running", "done", "failed" or "cancelled"; progress 0..1;
    message: what the worker is doing (or the error's sentence); error: the PrnError of a
    failed or cancelled job, else None."""

    state: str
    progress: float
    message: str
    error: PrnError | None = None


def temp_root() -> Path:
    """Folder for worker logs and per-client job folders (inside the system temp folder)."""
    return Path(tempfile.gettempdir()) / TEMP_ROOT_NAME


def _pid_alive(pid: int) -> bool | None:
    """True/False on POSIX; None where we cannot tell cheaply (Windows)."""
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_job_dirs(root: Path | None = None) -> list[Path]:
    """Remove job folders left by clients that no longer run (crashed Blender sessions).
    Folder names are ``jobs-<client pid>-<random>``. Returns the removed folders."""
    root = temp_root() if root is None else root
    removed = []
    if not root.is_dir():
        return removed
    now = time.time()
    for path in root.glob("jobs-*-*"):
        try:
            pid = int(path.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        alive = _pid_alive(pid)
        if pid == os.getpid():
            continue
        stale = (alive is False) or (
            alive is None and now - path.stat().st_mtime > STALE_DIR_AGE_S)
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _prune_logs(root: Path) -> None:
    logs = sorted(root.glob("worker-*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[:-KEEP_LOGS]:
        with contextlib.suppress(OSError):
            old.unlink()


def _log_tail(path: Path | None, lines: int = 3) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail)


def _kill(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(Exception):
            process.wait(timeout=5)


def _finalize(process: subprocess.Popen | None, job_dir: Path | None) -> None:
    """Last resort when a client is garbage-collected or Python exits: no orphan workers."""
    _kill(process)
    if job_dir is not None:
        shutil.rmtree(job_dir, ignore_errors=True)


class Job:
    """One reconstruction submitted to the worker. Thread-safe; `poll` never blocks."""

    def __init__(self, client: WorkerClient, job_id: str, photo_path: str) -> None:
        self.id = job_id
        self.photo_path = photo_path
        self._client = client
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._state = "running"
        self._progress = 0.0
        self._message = "Queued"
        self._error: PrnError | None = None
        self._results: list[FaceResult] | None = None
        self.submitted_at = time.monotonic()
        self.info: dict[str, Any] = {}
        """After success: device, trained (False = untrained weights: garbage), seconds."""

    # -------------------------------------------------------------- public
    def poll(self) -> JobStatus:
        """The job's state now (also detects a worker that stopped answering)."""
        self._client._check_hang(self)
        with self._lock:
            return JobStatus(self._state, self._progress, self._message, self._error)

    def result(self, timeout_s: float | None = None) -> list[FaceResult]:
        """Wait for the job and return its faces (largest first); raises its PrnError
        (CancelledError if cancelled, WorkerError if the worker died or hung). `timeout_s`
        None = the client's job timeout applies to worker silence only."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._done.wait(0.1):
            self._client._check_hang(self)
            if deadline is not None and time.monotonic() > deadline:
                raise WorkerError(
                    f"The reconstruction of '{self.photo_path}' took longer than {timeout_s:g} s.")
        with self._lock:
            if self._error is not None:
                raise self._error
            assert self._results is not None
            return list(self._results)

    def cancel(self) -> None:
        """Stop the job: its state becomes "cancelled" at once; the worker drops it at its
        next stage and any result it still sends is discarded."""
        if self._finish("cancelled", error=CancelledError("The reconstruction was cancelled.")):
            self._client._send_cancel(self.id)

    # -------------------------------------------------------------- from the reader thread
    def _finish(
        self, state: str, *, error: PrnError | None = None,
        results: list[FaceResult] | None = None, message: str | None = None,
    ) -> bool:
        with self._lock:
            if self._state != "running":
                return False
            self._state = state
            self._error = error
            self._results = results
            if state == "done":
                self._progress = 1.0
            self._message = message or (str(error) if error is not None else "Done")
        self._done.set()
        self._client._forget(self.id)
        return True

    def _on_progress(self, fraction: float, message: str) -> None:
        with self._lock:
            if self._state == "running":
                self._progress = max(0.0, min(1.0, float(fraction)))
                self._message = str(message)

    @property
    def finished(self) -> bool:
        return self._done.is_set()


class WorkerClient:
    """Owns one worker process. All methods may be called from any thread.

    python: the worker interpreter (needs torch + OpenCV); None = $PRN_BLENDER_PYTHON, else
    this interpreter. device: "auto" (CUDA > MPS > CPU), "cpu", "cuda" or "mps". weights: a
    .safetensors file (None = the installed weights). threads: torch CPU threads (None = one
    per core). start_timeout_s bounds spawn + imports + model load; job_timeout_s bounds how
    long a job may go without a word from the worker before the worker is declared hung and
    stopped. allow_untrained: accept an untrained weights file (results are garbage; the ping
    info and `Job.info` then say trained=False and the worker warns)."""

    def __init__(
        self, python: str | None = None, *, device: str = "auto", weights: str | None = None,
        threads: int | None = None, start_timeout_s: float = 60.0, job_timeout_s: float = 600.0,
        allow_untrained: bool = True,
    ) -> None:
        self.python = python or os.environ.get(PYTHON_ENV) or sys.executable
        self.device = device
        self.weights = None if weights is None else str(weights)
        self.threads = threads
        self.start_timeout_s = float(start_timeout_s)
        self.job_timeout_s = float(job_timeout_s)
        self.allow_untrained = allow_untrained
        self.log_path: Path | None = None
        self.job_dir: Path | None = None
        self.info: dict[str, Any] = {}
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._state_lock = threading.RLock()
        self._start_lock = threading.Lock()
        # Serialises spawning and stopping: `shutdown` may stop the process from another
        # thread while `start` holds `_start_lock`, never in the middle of a spawn.
        self._process_lock = threading.RLock()
        self._waiters: dict[str, queue.Queue] = {}
        self._jobs: dict[str, Job] = {}
        self._hello: queue.Queue = queue.Queue()
        self._dead_reason: str | None = None
        self._last_message = time.monotonic()
        self._finalizer: weakref.finalize | None = None

    # ================================================================== lifecycle
    def start(self) -> dict[str, Any]:
        """Start the worker (if not running) and load the model. Returns the ping info:
        protocol, python, torch, opencv, device, weights, layout_id, trained, threads, log.
        Raises DependencyError (interpreter lacks torch/OpenCV), WeightsError, WorkerError."""
        with self._start_lock:
            if self.is_alive() and self.info:
                return self.ping()
            self._stop_process()
            self._spawn()
            try:
                hello = self._wait_hello()
                if hello.get("protocol") != PROTOCOL:
                    raise WorkerError(
                        f"The worker at '{self.python}' speaks protocol {hello.get('protocol')!r},"
                        f" this add-on speaks {PROTOCOL}: they come from different versions. "
                        "Reinstall the add-on (and its worker environment) so they match.")
                reply = self._request(
                    "load", self.start_timeout_s, weights=self.weights, device=self.device,
                    threads=self.threads, allow_untrained=self.allow_untrained)
            except BaseException:
                self._stop_process()
                raise
            self.info = {"protocol": PROTOCOL, "log": str(self.log_path), **_public(reply)}
            return dict(self.info)

    def ping(self, timeout_s: float = PING_TIMEOUT_S) -> dict[str, Any]:
        """The worker's info (see `start`), asked now; answered even while a job runs."""
        if not self.is_alive():
            raise self._dead_error("The worker is not running")
        reply = self._request("ping", timeout_s)
        return {"protocol": PROTOCOL, "log": str(self.log_path), **_public(reply)}

    def is_alive(self) -> bool:
        """True while the worker process runs and answers (not declared dead or hung)."""
        p = self._process
        return p is not None and p.poll() is None and self._dead_reason is None

    def shutdown(self) -> None:
        """Ask the worker to exit (kill it after a few seconds), cancel pending jobs, and
        remove this client's temporary files. Safe to call twice, and from another thread
        while `start` runs there: its process is killed so the start fails at once instead of
        keeping the caller (Blender's UI thread) waiting for the model to load."""
        while not self._start_lock.acquire(timeout=0.2):
            if self._process is not None:
                self._stop_process(reason="The worker was shut down")
        try:
            p = self._process
            if p is not None and p.poll() is None and self._dead_reason is None:
                with contextlib.suppress(PrnError):
                    self._request("shutdown", SHUTDOWN_WAIT_S)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=SHUTDOWN_WAIT_S)
            self._stop_process(reason="The worker was shut down")
            self.info = {}
        finally:
            self._start_lock.release()

    def __enter__(self) -> WorkerClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ================================================================== jobs
    def submit(self, photo_path: str, options: ReconstructOptions | None = None) -> Job:
        """Queue a reconstruction (starts the worker first if needed: that call blocks for the
        start-up). Returns at once with a `Job` to poll."""
        if not self.is_alive() or not self.info:
            self.start()
        options = options or ReconstructOptions()
        job_id = uuid.uuid4().hex
        job = Job(self, job_id, str(photo_path))
        with self._state_lock:
            self._jobs[job_id] = job
        try:
            self._send("reconstruct", job_id, photo=os.path.abspath(str(photo_path)),
                       options=options.to_dict())
        except WorkerError as error:
            job._finish("failed", error=error)
        return job

    def reconstruct(
        self, photo_path: str, options: ReconstructOptions | None = None,
        on_progress: Callable[[float, str], None] | None = None,
    ) -> list[FaceResult]:
        """Submit and wait: the faces found (largest first). on_progress(fraction, message)
        is called from this thread as the worker reports stages."""
        job = self.submit(photo_path, options)
        last = None
        while not job._done.wait(0.05):
            status = job.poll()
            if on_progress is not None and (status.progress, status.message) != last:
                last = (status.progress, status.message)
                on_progress(status.progress, status.message)
        if on_progress is not None and job.poll().state == "done":
            on_progress(1.0, "Done")
        return job.result()

    # ================================================================== internals
    def _spawn(self) -> None:
        python = self.python
        if not (Path(python).is_file() or shutil.which(python)):
            raise WorkerError(
                f"The worker Python '{python}' does not exist. Choose an interpreter that has "
                "torch and OpenCV in the add-on preferences (or let the add-on create one).")
        root = temp_root()
        root.mkdir(parents=True, exist_ok=True)
        clean_stale_job_dirs(root)
        _prune_logs(root)
        self.job_dir = Path(tempfile.mkdtemp(prefix=f"jobs-{os.getpid()}-", dir=root))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_path = root / f"worker-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        env.pop("PYTHONHOME", None)  # Blender's own would break another interpreter
        env.pop("PYTHONPATH", None)
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        with self._process_lock:
            self._spawn_process(python, env, flags)

    def _spawn_process(self, python: str, env: dict[str, str], flags: int) -> None:
        assert self.log_path is not None and self.job_dir is not None
        with open(self.log_path, "wb") as log:
            try:
                self._process = subprocess.Popen(
                    [python, str(WORKER_SCRIPT), "--tmpdir", str(self.job_dir)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                    creationflags=flags, close_fds=True,
                )
            except OSError as error:
                raise WorkerError(
                    f"Could not start the worker Python '{python}' ({error}). Choose another "
                    "interpreter in the add-on preferences.") from error
        self._dead_reason = None
        self._last_message = time.monotonic()
        self._hello = queue.Queue()
        self._finalizer = weakref.finalize(self, _finalize, self._process, self.job_dir)
        self._reader = threading.Thread(
            target=self._read_loop, args=(self._process,), name="prn-worker-reader", daemon=True)
        self._reader.start()

    def _stop_process(self, reason: str = "The worker was restarted") -> None:
        with self._process_lock:
            self._stop_process_locked(reason)

    def _stop_process_locked(self, reason: str) -> None:
        with self._state_lock:
            if self._dead_reason is None:
                self._dead_reason = reason
        p = self._process
        _kill(p)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        with self._state_lock:
            jobs = list(self._jobs.values())
            waiters = list(self._waiters.values())
        for job in jobs:
            job._finish("cancelled", error=CancelledError(f"{reason}; the job was dropped."))
        for waiter in waiters:
            waiter.put(None)
        self._hello.put(None)  # a start waiting for the worker's hello fails now
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self.job_dir is not None:
            shutil.rmtree(self.job_dir, ignore_errors=True)
            self.job_dir = None
        self._process = None

    def _read_loop(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            self._last_message = time.monotonic()
            try:
                message = json.loads(raw.decode("utf-8", errors="replace"))
                if not isinstance(message, dict):
                    raise ValueError("not an object")
            except ValueError:
                continue  # not ours (a library wrote to stdout); the protocol is JSON objects
            self._dispatch(message)
        code = process.wait()
        if self._process is process and self._dead_reason is None:
            self._mark_dead(self._exit_reason(code))

    def _exit_reason(self, code: int) -> str:
        if code < 0:
            how = f"was killed (signal {-code})"
        else:
            how = f"exited (code {code})"
        return f"The worker {how}"

    def _dead_error(self, reason: str | None = None) -> WorkerError:
        reason = reason or self._dead_reason or "The worker is not running"
        tail = _log_tail(self.log_path)
        detail = f" Last log lines: {tail}." if tail else ""
        return WorkerError(
            f"{reason}.{detail} Log: {self.log_path}. Run it again to restart the worker; if it "
            "keeps failing, check the worker interpreter in the add-on preferences.")

    def _mark_dead(self, reason: str) -> None:
        with self._state_lock:
            if self._dead_reason is None:
                self._dead_reason = reason
            jobs = list(self._jobs.values())
            waiters = list(self._waiters.values())
        error = self._dead_error(reason)
        for job in jobs:
            job._finish("failed", error=error)
        for waiter in waiters:
            waiter.put(None)
        self._hello.put(None)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        id_ = message.get("id")
        if kind == "hello" or (id_ is None and kind == "error" and not self.info):
            self._hello.put(message)
            return
        with self._state_lock:
            waiter = self._waiters.get(str(id_)) if id_ is not None else None
            job = self._jobs.get(str(id_)) if id_ is not None else None
        if waiter is not None:
            waiter.put(message)
        elif job is not None:
            self._on_job_message(job, message)
        elif kind == "result":
            self._delete_files(message)  # a cancelled job's late result

    def _on_job_message(self, job: Job, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "progress":
            job._on_progress(message.get("progress", 0.0), message.get("message", ""))
        elif kind == "result":
            try:
                results = [FaceResult.load_npz(path) for path in message.get("files", [])]
            except (OSError, ValueError, KeyError) as error:
                self._delete_files(message)
                job._finish("failed", error=WorkerError(
                    f"Could not read the worker's result files ({error}). Log: {self.log_path}"))
            else:
                self._delete_files(message)  # before finishing: a finished job left no files
                job.info = {k: message.get(k) for k in ("device", "trained", "seconds")}
                job._finish("done", results=results)
        elif kind == "cancelled":
            job._finish("cancelled", error=CancelledError("The reconstruction was cancelled."))
        elif kind == "error":
            job._finish("failed", error=error_from_dict(message.get("error") or {}))

    @staticmethod
    def _delete_files(message: dict[str, Any]) -> None:
        for path in message.get("files", []):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _wait_hello(self) -> dict[str, Any]:
        try:
            message = self._hello.get(timeout=self.start_timeout_s)
        except queue.Empty:
            raise WorkerError(
                f"The worker did not start within {self.start_timeout_s:g} s (importing torch "
                f"may be slow on a first run). Log: {self.log_path}. Try again, or raise the "
                "start timeout (Worker Start Timeout in the add-on preferences; "
                "`start_timeout_s` in Python).") from None
        if message is None:
            raise self._dead_error(f"The worker stopped during start-up (Python '{self.python}')")
        if message.get("type") == "error":
            error = error_from_dict(message.get("error") or {})
            if not isinstance(error, DependencyError):
                error = WorkerError(f"The worker could not start: {error}")
            raise error
        return message

    def _send(self, kind: str, id_: str | None, **fields: Any) -> None:
        p = self._process
        if p is None or p.stdin is None or not self.is_alive():
            raise self._dead_error()
        line = json.dumps({"protocol": PROTOCOL, "id": id_, "type": kind, **fields}) + "\n"
        try:
            with self._write_lock:
                p.stdin.write(line.encode("utf-8"))
                p.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as error:
            raise self._dead_error(f"The worker stopped ({error})") from error

    def _request(self, kind: str, timeout_s: float, **fields: Any) -> dict[str, Any]:
        """Send a request and wait for its reply; raises the reply's error as its class."""
        id_ = uuid.uuid4().hex
        waiter: queue.Queue = queue.Queue()
        with self._state_lock:
            self._waiters[id_] = waiter
        try:
            self._send(kind, id_, **fields)
            try:
                reply = waiter.get(timeout=timeout_s)
            except queue.Empty:
                self._declare_hung(f"The worker did not answer '{kind}' within {timeout_s:g} s")
                raise self._dead_error() from None
        finally:
            with self._state_lock:
                self._waiters.pop(id_, None)
        if reply is None:
            raise self._dead_error()
        if reply.get("type") == "error":
            raise error_from_dict(reply.get("error") or {})
        return reply

    def _declare_hung(self, reason: str) -> None:
        """Stop an unresponsive worker; its jobs fail with `reason`."""
        with self._state_lock:
            if self._dead_reason is None:
                self._dead_reason = reason + "; it was stopped"
        _kill(self._process)
        self._mark_dead(self._dead_reason or reason)

    def _check_hang(self, job: Job) -> None:
        if job.finished:
            return
        if self._process is None:
            job._finish("failed", error=self._dead_error())
            return
        silent = time.monotonic() - max(self._last_message, job.submitted_at)
        if silent > self.job_timeout_s:
            self._declare_hung(
                f"The worker sent nothing for {self.job_timeout_s:g} s while reconstructing "
                f"'{job.photo_path}' (it may be stuck)")

    def _send_cancel(self, job_id: str) -> None:
        with contextlib.suppress(PrnError):
            self._send("cancel", None, job=job_id)

    def _forget(self, job_id: str) -> None:
        with self._state_lock:
            self._jobs.pop(job_id, None)


def _public(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("protocol", "id", "type")}
