"""A stand-in worker speaking the real JSON-lines protocol (inference/worker.py, PROTOCOL 1)
with a known answer: every reconstruct returns copies of the FaceResult .npz files named in
$FAKE_WORKER_RESULTS (os.pathsep-separated). numpy + stdlib only, starts in ~0.1 s.

$FAKE_WORKER_MODE: "" (answer), "slow" (progress every 0.2 s for 10 s, cancellable),
"crash" (exit 7 when a reconstruct arrives), "crashsecond" (exit 7 when the second one
arrives), "noface" (NoFaceFoundError), "startup" (exit 1 before saying hello), "slowstart"
(say hello only after 60 s).

The client runs `<python> <worker.py> --tmpdir DIR`; a wrapper script as the "python" runs this
file instead with the same arguments.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time

PROTOCOL = 1


def send(type_: str, id_: str | None = None, **fields) -> None:
    sys.stdout.write(json.dumps({"protocol": PROTOCOL, "id": id_, "type": type_, **fields}) + "\n")
    sys.stdout.flush()


def main() -> int:
    mode = os.environ.get("FAKE_WORKER_MODE", "")
    if mode == "startup":
        print("fake worker: refusing to start", file=sys.stderr)
        return 1
    if mode == "slowstart":
        time.sleep(60)
    tmpdir = sys.argv[sys.argv.index("--tmpdir") + 1]
    results = [p for p in os.environ.get("FAKE_WORKER_RESULTS", "").split(os.pathsep) if p]
    cancelled: set[str] = set()
    info = {"python": sys.executable, "torch": "fake", "opencv": "fake", "device": "cpu",
            "weights": "fake.safetensors", "layout_id": "fake", "trained": False}
    send("hello", None, python=sys.executable, pid=os.getpid())

    jobs_seen = []

    def job(id_: str) -> None:
        jobs_seen.append(id_)
        if mode == "crash" or (mode == "crashsecond" and len(jobs_seen) == 2):
            os._exit(7)
        if mode == "noface":
            send("error", id_, error={"type": "NoFaceFoundError",
                                      "message": "No face found. Try a closer photo."})
            return
        steps = 50 if mode == "slow" else 2
        for step in range(steps):
            if id_ in cancelled:
                send("cancelled", id_)
                return
            send("progress", id_, progress=step / steps, message=f"step {step}")
            time.sleep(0.2 if mode == "slow" else 0.0)
        files = []
        for index, path in enumerate(results):
            target = os.path.join(tmpdir, f"{id_}-{index}.npz")
            shutil.copyfile(path, target)
            files.append(target)
        send("result", id_, files=files, device="cpu", trained=False, seconds=0.0)

    for line in sys.stdin:
        message = json.loads(line)
        kind, id_ = message.get("type"), message.get("id")
        if kind == "ping":
            send("pong", id_, **info)
        elif kind == "load":
            send("loaded", id_, **info)
        elif kind == "reconstruct":
            threading.Thread(target=job, args=(id_,), daemon=True).start()
        elif kind == "cancel":
            cancelled.add(str(message.get("job")))
        elif kind == "shutdown":
            send("bye", id_)
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
