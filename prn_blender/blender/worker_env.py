"""The worker's own virtual environment: find it, create it, pip-install torch + OpenCV into it.

Blender's Python has numpy only; the worker (inference/worker.py) needs torch and OpenCV. This
module creates a dedicated venv from a base Python (default: the interpreter running Blender,
so the worker gets the same Python version), then runs
``<venv python> -m pip install -r worker_requirements.txt`` in a background thread, parsing
pip's output into a progress fraction and a status line that the preferences draw.

Downloading needs Blender's "Allow Online Access" (`bpy.app.online_access`): the installer
refuses with a message saying so when it is off. Command construction is pure (tested); only
`WorkerEnvInstaller.start` runs processes. bpy is imported lazily, so the pure part imports
without Blender.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from ..errors import DependencyError, PrnError

REQUIREMENTS = Path(__file__).resolve().with_name("worker_requirements.txt")
VENV_FOLDER = "worker-venv"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
"""PyTorch's CPU-only wheel index: ~200 MB instead of PyPI's ~3 GB CUDA build on Linux."""

READY_MARKER = "prn-worker-ready"
"""Written into the venv when the install succeeded: only then is it the 'Auto' worker (a
venv's python exists long before pip has installed anything into it)."""

OFFLINE_MESSAGE = (
    "Blender's online access is off, so the add-on may not download torch and OpenCV. Turn on "
    "Preferences > System > Network > Allow Online Access and press the button again, or create "
    "the environment yourself ({command}) and choose its Python as the worker interpreter."
)


def addon_package() -> str:
    """The add-on's root package: 'prn_blender' (legacy add-on) or 'bl_ext.<repo>.prn_blender'."""
    return __package__.rsplit(".", 1)[0]


def venv_python(venv_dir: Path) -> Path:
    """The interpreter inside a venv (Scripts/python.exe on Windows, bin/python elsewhere)."""
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def default_venv_dir() -> Path:
    """Where the add-on keeps its worker venv: the extension's user folder when installed as an
    extension, else Blender's user data folder (legacy add-on). On Windows a short folder,
    %LOCALAPPDATA%\\prnb\\venv: torch's wheel holds paths of ~170 characters that, under the
    extension folder, pass Windows' 260-character limit (pip then fails with WinError 206)."""
    if os.name == "nt":
        return Path(windows_venv_dir(os.environ.get("LOCALAPPDATA") or str(Path.home())))
    import bpy

    package = addon_package()
    if package.startswith("bl_ext."):
        try:
            return Path(bpy.utils.extension_path_user(package, path=VENV_FOLDER, create=False))
        except (ValueError, KeyError):
            pass
    base = bpy.utils.user_resource("DATAFILES", path="prn_blender", create=False)
    return Path(base) / VENV_FOLDER


def windows_venv_dir(local_app_data: str) -> PureWindowsPath:
    """The worker venv's folder on Windows: <%LOCALAPPDATA%>\\prnb\\venv (short: see
    `default_venv_dir`)."""
    return PureWindowsPath(local_app_data) / "prnb" / "venv"


def default_python() -> str | None:
    """Auto-detected worker interpreter: the add-on's own venv if its install finished
    (`READY_MARKER`), else $PRN_BLENDER_PYTHON; None = let the client decide (it falls back to
    this interpreter)."""
    venv_dir = default_venv_dir()
    candidate = venv_python(venv_dir)
    if candidate.is_file() and install_finished(venv_dir):
        return str(candidate)
    return os.environ.get("PRN_BLENDER_PYTHON") or None


WORKER_PACKAGES = ("torch", "cv2", "numpy", "safetensors")
"""Import folders a finished worker venv has in its site-packages."""


def install_finished(venv_dir: Path) -> bool:
    """The venv's install completed: its `READY_MARKER`, or (a venv made before the marker
    existed) every one of `WORKER_PACKAGES` in its site-packages. Cheap: the preferences
    draw it."""
    if (venv_dir / READY_MARKER).is_file():
        return True
    for site in [*venv_dir.glob("lib/python3*/site-packages"), venv_dir / "Lib" / "site-packages"]:
        if all((site / name).is_dir() for name in WORKER_PACKAGES):
            return True
    return False


def default_base_python() -> str:
    """The Python a new venv is made from: the interpreter running Blender (same version)."""
    return sys.executable


def create_venv_command(base_python: str, venv_dir: Path) -> list[str]:
    """Command that creates the venv (with pip)."""
    return [str(base_python), "-m", "venv", str(venv_dir)]


def pip_install_command(
    python: str | Path, requirements: Path = REQUIREMENTS, *, cpu_only: bool = True,
    platform: str = sys.platform,
) -> list[str]:
    """Command that installs the worker's pinned requirements into `python`'s environment.

    cpu_only: on Linux and Windows, take torch from PyTorch's CPU index (the PyPI build bundles
    CUDA, ~3 GB); macOS wheels on PyPI are CPU/MPS already. pip, never uv/poetry (DESIGN.md
    section 4)."""
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check",
               "--progress-bar", "off", "-r", str(requirements)]
    if cpu_only and not platform.startswith("darwin"):
        command += ["--extra-index-url", TORCH_CPU_INDEX]
    return command


def require_online_access(online_access: bool, commands: list[list[str]]) -> None:
    """Raise DependencyError (saying what to do: every command, in order) when Blender may not
    go online."""
    if not online_access:
        raise DependencyError(OFFLINE_MESSAGE.format(
            command=", then ".join(" ".join(command) for command in commands)))


def check_platform(system: str = sys.platform, machine: str | None = None) -> None:
    """Raise DependencyError where the pinned torch has no wheels: Intel Macs (PyTorch
    publishes macOS wheels for Apple Silicon only since 2.3)."""
    machine = (machine or platform.machine()).lower()
    if system.startswith("darwin") and machine in ("x86_64", "amd64", "i386"):
        raise DependencyError(
            "PyTorch no longer publishes wheels for Intel Macs, so the worker environment "
            "cannot be created here. Use an Apple Silicon Mac, Windows or Linux, or point "
            "Worker Python at an interpreter that already has torch and OpenCV.")


@dataclass
class InstallState:
    """What the preferences show while / after installing. fraction in [0, 1]."""

    running: bool = False
    fraction: float = 0.0
    message: str = ""
    error: str = ""
    python: str = ""
    log: list[str] = field(default_factory=list)


def progress_from_pip_line(line: str, state: InstallState, n_requirements: int) -> None:
    """Advance `state` from one line of pip output (each 'Collecting' is one step; installing
    is the last 20 %)."""
    text = line.strip()
    if not text:
        return
    state.log.append(text)
    del state.log[:-200]
    step = 0.7 / max(n_requirements * 3, 1)  # requirements plus their dependencies
    if text.startswith("Collecting"):
        state.fraction = min(0.8, state.fraction + step)
        state.message = text
    elif text.startswith("Installing collected packages"):
        state.fraction = max(state.fraction, 0.85)
        state.message = "Installing packages (this takes a minute)"
    elif text.startswith("Successfully installed"):
        state.fraction = 1.0
        state.message = "Installed"
    elif text.startswith(("ERROR", "error")):
        state.error = text


def _count_requirements(path: Path) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return sum(1 for line in lines if line.strip() and not line.lstrip().startswith("#"))


class WorkerEnvInstaller:
    """Creates the venv and installs the requirements in a background thread."""

    def __init__(self, base_python: str, venv_dir: Path, *, cpu_only: bool = True) -> None:
        self.base_python = base_python
        self.venv_dir = Path(venv_dir)
        self.cpu_only = cpu_only
        self.state = InstallState()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        self._cancelled = False

    def commands(self) -> list[list[str]]:
        python = venv_python(self.venv_dir)
        return [create_venv_command(self.base_python, self.venv_dir),
                pip_install_command(python, cpu_only=self.cpu_only)]

    def start(self, online_access: bool) -> None:
        """Start in the background; raises DependencyError when offline or already running."""
        check_platform()
        require_online_access(online_access, self.commands())
        if self.state.running:
            raise DependencyError("The worker environment is already being installed; wait.")
        if not Path(self.base_python).is_file():
            raise DependencyError(
                f"The base Python '{self.base_python}' does not exist. Choose a Python 3.11 "
                "interpreter in the add-on preferences.")
        self.state = InstallState(running=True, message="Creating the virtual environment")
        self._thread = threading.Thread(target=self._run, name="prn-venv", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop a running install (the add-on is disabled, Blender quits); what it left is
        not marked ready, so it is never picked as the worker."""
        self._cancelled = True
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()

    def _run(self) -> None:
        state = self.state
        self._cancelled = False
        n_requirements = _count_requirements(REQUIREMENTS)
        marker = self.venv_dir / READY_MARKER
        # The child's output is read as UTF-8 (Blender runs Python in UTF-8 mode); make pip
        # write UTF-8 too, and never let one odd byte end the install.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
        env.update(PYTHONIOENCODING="utf-8", PYTHONUTF8="1")
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        try:
            marker.unlink(missing_ok=True)
            for index, command in enumerate(self.commands()):
                if self._cancelled:
                    raise PrnError("The installation was stopped")
                self._process = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    encoding="utf-8", errors="replace", env=env, creationflags=flags,
                )
                assert self._process.stdout is not None
                for line in self._process.stdout:
                    progress_from_pip_line(line, state, n_requirements)
                code = self._process.wait()
                if code != 0:
                    tail = " | ".join(state.log[-3:])
                    raise PrnError(
                        f"'{' '.join(command[:4])} ...' failed (exit code {code}): "
                        f"{state.error or tail}. Check the network and the base Python, "
                        "then try again.")
                if index == 0:
                    state.fraction = 0.1
                    state.message = "Downloading torch and OpenCV"
            marker.write_text(REQUIREMENTS.read_text(encoding="utf-8"), encoding="utf-8")
            state.python = str(venv_python(self.venv_dir))
            state.fraction = 1.0
            state.message = f"Worker environment ready: {state.python}"
        except Exception as error:  # shown in the preferences, never a dead thread
            state.error = str(error) or type(error).__name__
            state.message = "Installation failed"
        finally:
            process = self._process
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
            state.running = False
            self._process = None


def stop_install() -> None:
    """Stop the session's installer if it runs (the add-on is being disabled)."""
    if _INSTALLER is not None and _INSTALLER.state.running:
        _INSTALLER.cancel()


_INSTALLER: WorkerEnvInstaller | None = None


def installer() -> WorkerEnvInstaller | None:
    """The installer of this Blender session (None before the first install)."""
    return _INSTALLER


def start_install(base_python: str, online_access: bool, *, cpu_only: bool = True,
                  venv_dir: Path | None = None) -> WorkerEnvInstaller:
    """Start (or restart after a finished run) the session's installer."""
    global _INSTALLER
    if _INSTALLER is not None and _INSTALLER.state.running:
        raise DependencyError("The worker environment is already being installed; wait.")
    candidate = WorkerEnvInstaller(base_python, venv_dir or default_venv_dir(),
                                   cpu_only=cpu_only)
    candidate.start(online_access)
    _INSTALLER = candidate
    return candidate
