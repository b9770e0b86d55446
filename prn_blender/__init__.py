"""prn-blender: one photo of a person to a textured 3D face mesh (PRNet, Feng et al., ECCV 2018).

Two entry points share this package:

* Blender calls `register()` / `unregister()` (extension or legacy add-on). Enabling the add-on
  imports `prn_blender.blender` only, which needs numpy and bpy, never torch or OpenCV.
* Python users do `from prn_blender import Reconstructor`; the name is resolved lazily
  (module `__getattr__`) so that importing the package itself stays torch-free.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Legacy add-on metadata (Blender < 4.2 style installs); extensions read blender_manifest.toml.
bl_info = {
    "name": "PRN Face from Photo",
    "author": "prn-blender developers",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "File > Import > Face from Photo; 3D Viewport > Sidebar > PRN",
    "description": "Reconstruct a textured 3D face mesh from one photo (PRNet)",
    "category": "Import-Export",
}

_LAZY = {
    "Reconstructor": ("prn_blender.inference.reconstructor", "Reconstructor"),
    "FaceResult": ("prn_blender.core.result", "FaceResult"),
    "ReconstructOptions": ("prn_blender.core.options", "ReconstructOptions"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        # Relative to this package, so it also works as bl_ext.<repo>.prn_blender.
        module = importlib.import_module(module_name.replace("prn_blender", __name__, 1))
        return getattr(module, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> None:
    """Called by Blender when the add-on is enabled."""
    from .blender import register as _register

    _register()


def unregister() -> None:
    """Called by Blender when the add-on is disabled."""
    from .blender import unregister as _unregister

    _unregister()
