"""Blender side of prn-blender: preferences, operators, sidebar panel and scene building.

Data flows one way: FaceResult arrays (from the worker, photo pixels) -> scene.py -> Blender
datablocks. Imports bpy, numpy and prn_blender's numpy-only core + the worker client; never
torch or OpenCV (they live in the worker's own Python).
"""

from __future__ import annotations

import bpy

from . import operators, panel, preferences, worker_env

classes = (*preferences.classes, *operators.classes, *panel.classes)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(operators.menu_func_import)


def unregister() -> None:
    if bpy.app.timers.is_registered(operators._watch_check):
        bpy.app.timers.unregister(operators._watch_check)
    operators.shutdown_client()
    worker_env.stop_install()
    bpy.types.TOPBAR_MT_file_import.remove(operators.menu_func_import)
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
