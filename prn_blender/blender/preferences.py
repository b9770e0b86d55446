"""Add-on preferences: worker interpreter (+ venv installer), device, weights, texture size."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import worker_env

ADDON_ID = worker_env.addon_package()
"""bl_idname of the preferences: the add-on's root package (legacy or bl_ext.<repo>.*)."""

DEVICE_ITEMS = (
    ("auto", "Auto", "CUDA if available, else Apple MPS, else CPU"),
    ("cpu", "CPU", "Run the network on the CPU (always available)"),
    ("cuda", "CUDA", "NVIDIA GPU (needs a CUDA build of torch in the worker environment)"),
    ("mps", "MPS", "Apple Silicon GPU (macOS)"),
)

worker_check_text: list[str] = []
"""Lines of the last 'Check' result, drawn under the button (module state, not saved)."""


class PRN_AddonPreferences(bpy.types.AddonPreferences):
    """Where the worker runs and what it loads."""

    bl_idname = ADDON_ID

    python_path: StringProperty(
        name="Worker Python",
        description=(
            "Python interpreter with torch and OpenCV that runs the face network. Empty = "
            "auto: the environment this add-on created, else $PRN_BLENDER_PYTHON"
        ),
        default="",
        subtype="FILE_PATH",
    )
    base_python: StringProperty(
        name="Base Python",
        description=(
            "Python 3.11 used to create the worker environment. Empty = the Python running "
            "Blender"
        ),
        default="",
        subtype="FILE_PATH",
    )
    device: EnumProperty(
        name="Device",
        description="Where the worker runs the network",
        items=DEVICE_ITEMS,
        default="auto",
    )
    start_timeout: IntProperty(
        name="Worker Start Timeout",
        description=(
            "Seconds the worker may take to start (import torch) and, again, to load the "
            "network, before it is given up. Raise it if a first start keeps timing out"
        ),
        default=120,
        min=10,
        max=1800,
    )
    weights_path: StringProperty(
        name="Weights",
        description=(
            "PRN weights (.safetensors). Empty = the weights installed with the add-on, or "
            "$PRN_BLENDER_WEIGHTS"
        ),
        default="",
        subtype="FILE_PATH",
    )
    texture_size: IntProperty(
        name="Default Texture Size",
        description="Side of the face texture in pixels, when the import does not choose one",
        default=1024,
        min=256,
        max=4096,
        subtype="PIXEL",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        box = layout.box()
        box.label(text="Worker", icon="CONSOLE")
        box.prop(self, "python_path")
        if not self.python_path:
            auto = worker_env.default_python()
            box.label(text=f"Auto: {auto or 'not found (create an environment below)'}")
        row = box.row()
        row.operator("prn.check_worker", icon="CHECKMARK")
        for line in worker_check_text:
            box.label(text=line)

        box = layout.box()
        box.label(text="Worker environment (downloads torch and OpenCV, ~1 GB)",
                  icon="PACKAGE")
        box.prop(self, "base_python")
        installer = worker_env.installer()
        state = installer.state if installer is not None else None
        row = box.row()
        row.enabled = state is None or not state.running
        row.operator("prn.create_worker_env", icon="IMPORT")
        if state is not None:
            if state.running:
                box.progress(factor=state.fraction, text=state.message or "Working")
            elif state.message:
                box.label(text=state.message, icon="ERROR" if state.error else "INFO")
            if state.error:
                box.label(text=state.error[:200])
        if not bpy.app.online_access:
            box.label(text="Online access is off: the installer cannot download.",
                      icon="INFO")

        layout.prop(self, "device")
        layout.prop(self, "weights_path")
        layout.prop(self, "texture_size")
        layout.prop(self, "start_timeout")


def addon_preferences(context: bpy.types.Context | None = None) -> PRN_AddonPreferences | None:
    """This add-on's preferences, or None when it is not enabled (e.g. a script imported the
    scene module only)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return None if addon is None else addon.preferences


classes = (PRN_AddonPreferences,)
