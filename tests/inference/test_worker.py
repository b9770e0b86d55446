"""The background worker, for real: processes are spawned, killed, hung, fed garbage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from prn_blender.core.options import ReconstructOptions
from prn_blender.errors import (
    CancelledError,
    DependencyError,
    NoFaceFoundError,
    PhotoError,
    WorkerError,
)
from prn_blender.inference.client import (
    PROTOCOL,
    WORKER_SCRIPT,
    WorkerClient,
    clean_stale_job_dirs,
)
from prn_blender.inference.worker import FAULT_ENV
from tests.inference.conftest import ASTRONAUT_FACE_BOX

pytestmark = pytest.mark.timeout(180)
OPTIONS = ReconstructOptions(texture_size=128, refine=False, boxes=(ASTRONAUT_FACE_BOX,))


def _client(weights: Path, **kwargs) -> WorkerClient:
    return WorkerClient(sys.executable, device="cpu", weights=str(weights), threads=1, **kwargs)


@pytest.fixture(scope="module")
def client(untrained_weights: Path):
    c = _client(untrained_weights)
    c.start()
    yield c
    c.shutdown()


def test_start_reports_protocol_device_weights_and_untrained_flag(client, untrained_weights):
    info = client.ping()
    assert info["protocol"] == PROTOCOL
    assert info["device"] == "cpu" and info["threads"] == 1
    assert info["weights"] == str(untrained_weights)
    assert info["trained"] is False
    assert info["layout_id"] == "ict-face-256-v1"
    assert info["torch"] and info["python"]
    assert Path(info["log"]).is_file()


def test_worker_result_equals_in_process_result(client, reconstructor, astronaut_jpg):
    events: list[tuple[float, str]] = []
    (face,) = client.reconstruct(str(astronaut_jpg), OPTIONS, on_progress=lambda p, m:
                                 events.append((p, m)))
    (local,) = reconstructor.reconstruct(astronaut_jpg, options=OPTIONS)
    np.testing.assert_allclose(face.position_map, local.position_map, atol=1e-3)
    np.testing.assert_array_equal(face.texture, local.texture)
    np.testing.assert_array_equal(face.triangles, local.triangles)
    assert events[-1] == (1.0, "Done")
    progress = [p for p, _ in events]
    assert progress == sorted(progress)
    assert list(client.job_dir.iterdir()) == []  # result files are deleted once read


def test_job_info_carries_device_and_trained_flag(client, astronaut_jpg):
    job = client.submit(str(astronaut_jpg), OPTIONS)
    job.result()
    assert job.poll().state == "done" and job.poll().progress == 1.0
    assert job.info["device"] == "cpu" and job.info["trained"] is False


def test_worker_errors_arrive_as_their_own_class(client, tmp_path):
    with pytest.raises(PhotoError, match="does not exist"):
        client.reconstruct(str(tmp_path / "missing.jpg"), ReconstructOptions())
    import cv2

    cv2.imwrite(str(tmp_path / "wall.jpg"), np.full((200, 200, 3), 127, np.uint8))
    job = client.submit(str(tmp_path / "wall.jpg"), ReconstructOptions())
    with pytest.raises(NoFaceFoundError, match=r"No face found in 'wall\.jpg'"):
        job.result()
    status = job.poll()
    assert status.state == "failed" and isinstance(status.error, NoFaceFoundError)
    assert client.is_alive()  # the worker survives artist errors


def test_two_clients_in_parallel_get_their_own_results(client, untrained_weights, astronaut,
                                                       tmp_path, reconstructor):
    import cv2

    mirrored = tmp_path / "mirrored.jpg"
    cv2.imwrite(str(mirrored), cv2.cvtColor(np.ascontiguousarray(astronaut[:, ::-1]),
                                            cv2.COLOR_RGB2BGR))
    original = tmp_path / "original.jpg"
    cv2.imwrite(str(original), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    other = _client(untrained_weights)
    try:
        other.start()
        assert other.job_dir != client.job_dir and other.info["pid"] != client.ping()["pid"]
        jobs = {}
        for _ in range(2):
            jobs.setdefault("a", []).append(client.submit(str(original), OPTIONS))
            jobs.setdefault("b", []).append(other.submit(str(mirrored), OPTIONS))
        expected = {
            "a": reconstructor.reconstruct(original, options=OPTIONS)[0].position_map,
            "b": reconstructor.reconstruct(mirrored, options=OPTIONS)[0].position_map,
        }
        for key, submitted in jobs.items():
            for job in submitted:
                (face,) = job.result()
                np.testing.assert_allclose(face.position_map, expected[key], atol=1e-3)
    finally:
        other.shutdown()
    assert other.job_dir is None and not other.is_alive()


def test_killed_worker_fails_the_job_and_restarts(untrained_weights, astronaut_jpg, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "slow")
    c = _client(untrained_weights)
    try:
        pid = c.start()["pid"]
        job_dir = c.job_dir
        job = c.submit(str(astronaut_jpg), OPTIONS)
        while job.poll().progress == 0.0 and job.poll().state == "running":
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"killed \(signal 9\).*Log: .*worker-"):
            job.result(timeout_s=30)
        assert not c.is_alive()
        with pytest.raises(WorkerError, match="not running"):
            c.ping()
        monkeypatch.delenv(FAULT_ENV)
        info = c.start()  # restart
        assert info["pid"] != pid and c.is_alive()
        assert not job_dir.exists()  # the dead worker's files were cleaned
        assert len(c.reconstruct(str(astronaut_jpg), OPTIONS)) == 1
    finally:
        c.shutdown()


def test_hung_worker_is_stopped_after_the_job_timeout(untrained_weights, astronaut_jpg,
                                                      monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "hang")
    c = _client(untrained_weights, job_timeout_s=2.0)
    try:
        c.start()
        process = c._process
        job = c.submit(str(astronaut_jpg), OPTIONS)
        with pytest.raises(WorkerError, match=r"sent nothing for 2 s.*stuck"):
            job.result(timeout_s=30)
        assert job.poll().state == "failed"
        assert process.wait(timeout=10) is not None and not c.is_alive()
    finally:
        c.shutdown()


def test_cancel_stops_the_job_and_the_worker_carries_on(untrained_weights, astronaut_jpg,
                                                        monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "slow")
    c = _client(untrained_weights)
    try:
        c.start()
        job = c.submit(str(astronaut_jpg), OPTIONS)
        job.cancel()
        status = job.poll()
        assert status.state == "cancelled" and isinstance(status.error, CancelledError)
        with pytest.raises(CancelledError):
            job.result()
        assert len(c.submit(str(astronaut_jpg), OPTIONS).result(timeout_s=60)) == 1
        assert list(c.job_dir.iterdir()) == []
    finally:
        c.shutdown()


def test_interpreter_without_torch_gives_dependency_error(python_without_torch, untrained_weights):
    c = WorkerClient(python_without_torch, weights=str(untrained_weights), start_timeout_s=60)
    with pytest.raises(DependencyError, match=r"lacks .*torch.*pip install"):
        c.start()
    assert not c.is_alive()


def test_a_package_that_fails_to_import_is_reported_as_broken_not_missing(
        tmp_path, monkeypatch, capsys):
    from prn_blender.inference import worker

    # An installed cv2 whose import fails (a shared library that will not load), and a
    # safetensors that is not installed at all.
    (tmp_path / "cv2").mkdir()
    (tmp_path / "cv2" / "__init__.py").write_text(
        "raise OSError('libGL.so.1: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cv2", raising=False)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    message = worker._dependency_message()
    assert "lacks safetensors." in message and "opencv" not in message.split("lacks")[1][:40]
    assert ("these packages are installed but fail to import (opencv-python-headless: "
            "OSError: libGL.so.1: cannot open shared object file)") in message
    assert "--force-reinstall" in message
    assert "libGL.so.1" in capsys.readouterr().err  # the traceback goes to the worker log


def test_missing_interpreter_gives_worker_error(tmp_path):
    c = WorkerClient(str(tmp_path / "no-python"))
    with pytest.raises(WorkerError, match="does not exist"):
        c.start()


def test_protocol_mismatch_is_refused_at_start(untrained_weights, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "protocol")
    c = _client(untrained_weights)
    with pytest.raises(WorkerError, match=r"speaks protocol 999.*Reinstall"):
        c.start()
    assert not c.is_alive()


def test_worker_answers_malformed_messages_and_carries_on(tmp_path):
    process = subprocess.Popen(
        [sys.executable, str(WORKER_SCRIPT), "--tmpdir", str(tmp_path / "jobs")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def send(line: str) -> dict:
        process.stdin.write(line.encode() + b"\n")
        process.stdin.flush()
        return json.loads(process.stdout.readline())

    try:
        hello = json.loads(process.stdout.readline())
        assert hello["type"] == "hello" and hello["protocol"] == PROTOCOL
        reply = send("{not json")
        assert reply["type"] == "error" and reply["error"]["type"] == "WorkerError"
        assert "malformed" in reply["error"]["message"]
        reply = send(json.dumps({"protocol": 2, "id": "x", "type": "ping"}))
        assert reply["id"] == "x" and "Protocol mismatch" in reply["error"]["message"]
        reply = send(json.dumps({"protocol": PROTOCOL, "id": "y", "type": "fly"}))
        assert "Unknown request type 'fly'" in reply["error"]["message"]
        reply = send(json.dumps({"protocol": PROTOCOL, "id": "z", "type": "ping"}))
        assert reply["type"] == "pong" and reply["loaded"] is False
        reply = send(json.dumps({"protocol": PROTOCOL, "id": "r", "type": "reconstruct",
                                 "photo": "x.jpg", "options": {}}))
        assert reply["id"] == "r" and reply["error"]["type"] == "WeightsError"
        assert send(json.dumps({"protocol": PROTOCOL, "id": "s", "type": "shutdown"}))[
            "type"] == "bye"
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_stale_job_folders_of_dead_clients_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"jobs-{dead.pid}-abc"
    stale.mkdir()
    (stale / "old-0.npz").write_bytes(b"x")
    live = tmp_path / f"jobs-{os.getppid()}-def"
    live.mkdir()
    removed = clean_stale_job_dirs(tmp_path)
    assert removed == [stale] and not stale.exists() and live.exists()


def test_poll_never_blocks_while_a_job_runs(client, astronaut_jpg):
    job = client.submit(str(astronaut_jpg), OPTIONS)
    polled = threading.Event()

    def poll() -> None:
        job.poll()
        polled.set()

    threading.Thread(target=poll).start()
    assert polled.wait(5)
    job.result()


def test_client_module_imports_neither_torch_nor_cv2():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'cv2'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from prn_blender.inference.client import WorkerClient, Job, JobStatus\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=str(Path(__file__).resolve().parents[2]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_shutdown_during_a_slow_start_returns_at_once_and_fails_the_start(tmp_path):
    """Blender's UI thread may shut the client down while a prewarm thread is still waiting
    for the worker to load: that must not block it for the start timeout."""
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nexec sleep 600\n")  # never says hello
    slow.chmod(0o755)
    client = WorkerClient(str(slow), device="cpu", start_timeout_s=120)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            client.start()
        except BaseException as error:  # collected for the assertion
            errors.append(error)

    thread = threading.Thread(target=start)
    thread.start()
    deadline = time.monotonic() + 30
    while client._process is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client._process is not None
    began = time.monotonic()
    client.shutdown()
    assert time.monotonic() - began < 5
    thread.join(10)
    assert not thread.is_alive() and len(errors) == 1 and isinstance(errors[0], WorkerError)
    assert not client.is_alive()
