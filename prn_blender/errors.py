"""Errors an artist may see. `str(e)` is the sentence shown in Blender or printed by the CLI.

Every message says what happened and what to do. The worker sends them across the process
boundary as {"type": <class name>, "message": str(e)} and the client re-raises the same class
(`error_from_dict`). Anything that is not a `PrnError` is a bug.
"""

from __future__ import annotations


class PrnError(Exception):
    """Base of every error an artist may see; str(e) is the message shown in Blender."""


class PhotoError(PrnError):
    """The photo cannot be read: missing, not an image, truncated, unsupported format."""


class NoFaceFoundError(PrnError):
    """No face was detected in the photo."""


class WeightsError(PrnError):
    """Weights missing, corrupt, untrained, or made for another UV layout."""


class LayoutError(PrnError):
    """The UV layout file is missing or does not match."""


class WorkerError(PrnError):
    """The background worker could not start, crashed, hung, or speaks another protocol."""


class CancelledError(PrnError):
    """The job was cancelled by the user."""


class DependencyError(PrnError):
    """A required package (torch, OpenCV) is not installed in this interpreter."""


class DeviceUnavailableError(DependencyError):
    """An explicitly requested device (CUDA, MPS) is not usable with this torch build/machine."""


_ALL = {
    cls.__name__: cls
    for cls in (
        PrnError,
        PhotoError,
        NoFaceFoundError,
        WeightsError,
        LayoutError,
        WorkerError,
        CancelledError,
        DependencyError,
        DeviceUnavailableError,
    )
}


def error_to_dict(error: PrnError) -> dict[str, str]:
    """The JSON form of an error, for the worker protocol."""
    return {"type": type(error).__name__, "message": str(error)}


def error_from_dict(data: dict[str, str]) -> PrnError:
    """Rebuild the error class named in `data` (unknown names become `PrnError`)."""
    cls = _ALL.get(str(data.get("type")), PrnError)
    return cls(str(data.get("message", "Unknown error.")))
