"""3D Viewport sidebar tab 'PRN': reconstruct, progress + cancel, and the active face's info."""

from __future__ import annotations

import bpy

from . import operators


class PRN_PT_reconstruct(bpy.types.Panel):
    """Sidebar panel: the Reconstruct Face button, the running job, the active face's pose."""

    bl_idname = "PRN_PT_reconstruct"
    bl_label = "Face from Photo"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "PRN"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        batch = operators.active_batch()
        if batch is not None and not batch.finished:
            fraction, message = batch.poll()
            layout.progress(factor=fraction, text=message)
            layout.operator(operators.PRN_OT_cancel_reconstruction.bl_idname, icon="CANCEL")
        else:
            layout.operator(operators.PRN_OT_reconstruct_face.bl_idname,
                            text="Reconstruct Face", icon="IMPORT")
        obj = context.active_object
        if obj is None or "prn_pixels_per_metre" not in obj:
            return
        box = layout.box()
        box.label(text=obj.name, icon="USER")
        col = box.column(align=True)
        col.label(text=f"Yaw {obj['prn_yaw_deg']:.1f}°  Pitch {obj['prn_pitch_deg']:.1f}°  "
                       f"Roll {obj['prn_roll_deg']:.1f}°")
        col.label(text=f"Scale {obj['prn_pixels_per_metre']:.0f} px/m "
                       "(eye corners 9 cm apart)")
        col.label(text=f"Pose: {obj.get('prn_pose', 'photo')}")


classes = (PRN_PT_reconstruct,)
