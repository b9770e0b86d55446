"""scene.build_face_object on a synthetic face of known geometry (ICT neutral at a known
similarity in a 640 x 480 photo; see conftest)."""

from __future__ import annotations

import numpy as np
import pytest

from prn_blender.core.frames import OUTER_EYE_DISTANCE_M, photo_to_blender
from prn_blender.core.geometry import vertex_normals

from .conftest import PHOTO_SIZE, TEXTURE_SIZE, make_synthetic_result

bpy = pytest.importorskip("bpy")
from mathutils import Vector  # noqa: E402

from prn_blender.blender import scene  # noqa: E402


def world_vertices(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3, dtype=np.float32)
    obj.data.vertices.foreach_get("co", co)
    m = np.array(obj.matrix_world, dtype=np.float64)
    co = co.reshape(-1, 3).astype(np.float64)
    return co @ m[:3, :3].T + m[:3, 3]


def expected_world(points_px: np.ndarray, result) -> np.ndarray:
    # Pixel centres sit at whole numbers: the photo's centre is ((W-1)/2, (H-1)/2).
    centre = np.array([(PHOTO_SIZE[0] - 1) / 2, (PHOTO_SIZE[1] - 1) / 2, 0.0], dtype=np.float32)
    return photo_to_blender(points_px - centre, result.metres_per_px).astype(np.float64)


def landmark_empties(obj) -> list:
    return sorted((c for c in obj.children if c.type == "EMPTY"),
                  key=lambda e: e["prn_landmark_index"])


def test_mesh_has_one_vertex_per_texel_and_two_triangles_per_quad(synthetic_face, layout):
    obj = scene.build_face_object(synthetic_face, "face")
    mesh = obj.data
    assert len(mesh.vertices) == layout.vertex_count
    assert len(mesh.polygons) == len(layout.triangles)
    assert len(mesh.loops) == 3 * len(layout.triangles)
    assert all(p.use_smooth for p in mesh.polygons[:100])
    loops = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", loops)
    np.testing.assert_array_equal(loops, np.asarray(layout.triangles).reshape(-1))
    assert mesh.validate(verbose=False) is False  # nothing to fix


def test_world_vertices_match_photo_to_blender_and_origin_is_bbox_centre(synthetic_face):
    obj = scene.build_face_object(synthetic_face, "face")
    bpy.context.view_layer.update()
    expected = expected_world(synthetic_face.vertices, synthetic_face)
    np.testing.assert_allclose(world_vertices(obj), expected, atol=1e-5)  # metres
    centre = (expected.min(axis=0) + expected.max(axis=0)) / 2
    np.testing.assert_allclose(np.array(obj.location), centre, atol=1e-5)


def test_face_is_metric_z_up_and_looks_along_minus_y(synthetic_face):
    obj = scene.build_face_object(synthetic_face, "face")
    bpy.context.view_layer.update()
    lm = np.array([e.matrix_world.translation for e in landmark_empties(obj)])
    assert np.linalg.norm(lm[45] - lm[36]) == pytest.approx(OUTER_EYE_DISTANCE_M, abs=1e-5)
    eyes = (lm[36] + lm[45]) / 2
    assert lm[30, 1] < eyes[1] - 0.01  # nose tip more than 1 cm ahead of the eyes along -Y
    verts = world_vertices(obj)
    assert lm[8, 2] < eyes[2] < verts[:, 2].max()  # chin below the eyes below the forehead
    assert lm[45, 0] > lm[36, 0]  # subject's left eye at +X (photo right)
    height = verts[:, 2].max() - verts[:, 2].min()
    assert 0.12 < height < 0.3, f"face height {height:.3f} m"
    # Scale: ICT centimetres at PX_PER_CM become centimetres again.
    assert 1 / obj["prn_pixels_per_metre"] == pytest.approx(synthetic_face.metres_per_px)


def test_normals_point_out_of_the_face(synthetic_face):
    obj = scene.build_face_object(synthetic_face, "face")
    bpy.context.view_layer.update()
    verts = world_vertices(obj)
    tip = np.array(landmark_empties(obj)[30].matrix_world.translation)
    nearest = int(np.argmin(np.linalg.norm(verts - tip, axis=1)))
    normals = np.empty(len(obj.data.vertices) * 3, dtype=np.float32)
    obj.data.vertices.foreach_get("normal", normals)
    normal = normals.reshape(-1, 3)[nearest]
    assert normal[1] < -0.7, f"nose-tip normal {normal} should point along -Y"
    # Blender's normals agree with the core's winding rule.
    core = vertex_normals(verts, np.asarray(synthetic_face.triangles))[nearest]
    assert np.dot(core, normal) > 0.99


def test_68_empties_are_named_parented_and_at_the_landmarks(synthetic_face):
    obj = scene.build_face_object(synthetic_face, "face")
    bpy.context.view_layer.update()
    empties = landmark_empties(obj)
    assert len(empties) == 68
    assert empties[30].name == "face.30.nose.tip"
    assert empties[8].name == "face.08.chin"
    assert empties[36].name == "face.36.eye.R.outer"
    assert all(e.parent == obj for e in empties)
    lm_collection = bpy.data.collections["face landmarks"]
    assert set(lm_collection.objects) == set(empties)
    assert lm_collection.name in bpy.data.collections["face"].children
    positions = np.array([e.matrix_world.translation for e in empties])
    np.testing.assert_allclose(positions, expected_world(synthetic_face.landmarks,
                                                         synthetic_face), atol=1e-5)
    # Moving the face moves its landmarks.
    obj.location.x += 1.0
    bpy.context.view_layer.update()
    assert empties[30].matrix_world.translation.x == pytest.approx(positions[30, 0] + 1.0)


def test_uv_layer_and_material_with_packed_texture(synthetic_face):
    obj = scene.build_face_object(synthetic_face, "face")
    mesh = obj.data
    assert mesh.uv_layers.active.name == "UVMap"
    uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
    mesh.uv_layers.active.data.foreach_get("uv", uv)
    loops = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", loops)
    np.testing.assert_allclose(uv.reshape(-1, 2), synthetic_face.uvs[loops], atol=1e-6)
    material = mesh.materials[0]
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    link = bsdf.inputs["Base Color"].links[0]
    assert link.from_node.type == "TEX_IMAGE"
    image = link.from_node.image
    assert image.packed_file is not None
    assert tuple(image.size) == (TEXTURE_SIZE, TEXTURE_SIZE)
    pixels = np.empty(TEXTURE_SIZE * TEXTURE_SIZE * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(TEXTURE_SIZE, TEXTURE_SIZE, 4)[::-1]  # Blender rows go up
    np.testing.assert_allclose(pixels[..., :3] * 255, synthetic_face.texture, atol=0.51)


def test_camera_overlays_the_photo(synthetic_face):
    obj = scene.build_face_object(synthetic_face, "face", camera=True)
    bpy.context.view_layer.update()
    camera = scene.face_camera(obj)
    assert camera is not None and camera.data.type == "ORTHO"
    s = synthetic_face.metres_per_px
    assert camera.data.ortho_scale == pytest.approx(max(PHOTO_SIZE) * s, rel=1e-6)
    view = camera.matrix_world.to_3x3() @ Vector((0, 0, -1))
    np.testing.assert_allclose(np.array(view), [0, 1, 0], atol=1e-6)
    up = camera.matrix_world.to_3x3() @ Vector((0, 1, 0))
    np.testing.assert_allclose(np.array(up), [0, 0, 1], atol=1e-6)
    # The camera frame spans the photo's pixel edges: pixel x (a pixel centre) covers
    # [x, x + 1] of W, so it is at fraction (x + 0.5) / W of the frame, from the left edge.
    empty = landmark_empties(obj)[30]
    local = camera.matrix_world.inverted() @ empty.matrix_world.translation
    x_px, y_px = synthetic_face.landmarks[30, :2]
    width_m, height_m = PHOTO_SIZE[0] * s, PHOTO_SIZE[1] * s
    assert local.x == pytest.approx(((x_px + 0.5) / PHOTO_SIZE[0] - 0.5) * width_m, abs=1e-6)
    assert local.y == pytest.approx((0.5 - (y_px + 0.5) / PHOTO_SIZE[1]) * height_m, abs=1e-6)
    assert local.z < 0  # in front of the camera


def test_camera_background_is_turned_upright_like_the_reconstruction(synthetic_face, tmp_path):
    """A phone portrait: landscape pixels + EXIF orientation 6. The result is in upright
    pixels (OpenCV applies the tag), so the background must be upright too."""
    import cv2

    from tests.core.test_exif import jpeg_with_orientation

    upright = np.zeros((PHOTO_SIZE[1], PHOTO_SIZE[0], 3), np.uint8)  # (H, W) of the result
    upright[: PHOTO_SIZE[1] // 4, : PHOTO_SIZE[0] // 4] = (250, 250, 250)  # bright top-left
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # what the phone wrote
    path = tmp_path / "portrait.jpg"
    path.write_bytes(jpeg_with_orientation(stored, 6))
    decoded = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == upright.shape[:2]  # OpenCV turns it upright
    obj = scene.build_face_object(synthetic_face, "face", camera=True, photo_path=path)
    image = scene.face_camera(obj).data.background_images[0].image
    assert tuple(image.size) == PHOTO_SIZE and image.packed_file is not None
    pixels = np.empty(PHOTO_SIZE[0] * PHOTO_SIZE[1] * 4, np.float32)
    image.pixels.foreach_get(pixels)
    top_down = pixels.reshape(PHOTO_SIZE[1], PHOTO_SIZE[0], 4)[::-1]
    h, w = PHOTO_SIZE[1] // 8, PHOTO_SIZE[0] // 8
    assert top_down[:h, :w, 0].mean() > 0.9  # bright corner at the top left, as in the result
    assert top_down[-h:, -w:, 0].mean() < 0.1
    assert not [i for i in bpy.data.images if i.filepath == str(path)]  # no sideways copy


def test_a_photo_file_that_changed_size_since_gives_no_misaligned_background(
        synthetic_face, tmp_path):
    import cv2

    path = tmp_path / "replaced.png"
    cv2.imwrite(str(path), np.zeros((PHOTO_SIZE[1] + 10, PHOTO_SIZE[0], 3), np.uint8))
    images_before = set(bpy.data.images)
    obj = scene.build_face_object(synthetic_face, "face", camera=True, photo_path=path)
    assert len(scene.face_camera(obj).data.background_images) == 0
    assert not [i for i in set(bpy.data.images) - images_before if i.filepath == str(path)]


def test_frontal_option_undoes_the_head_rotation(layout):
    from prn_blender.core.pose import HeadPose, rotation_from_angles

    base = make_synthetic_result(layout)
    rotation = rotation_from_angles(30.0, 0.0, 0.0)
    t = np.asarray(base.pose.translation)
    turned = ((base.vertices - t) @ rotation.T + t).astype(np.float32)
    lm = ((base.landmarks - t) @ rotation.T + t).astype(np.float32)
    pose = HeadPose(30.0, 0.0, 0.0, rotation @ base.pose.rotation, base.pose.scale, t)
    from dataclasses import replace

    result = replace(base, vertices=turned, landmarks=lm, pose=pose)
    obj = scene.build_face_object(result, "turned", frontal=True)
    bpy.context.view_layer.update()
    np.testing.assert_allclose(world_vertices(obj), expected_world(base.vertices, base),
                               atol=1e-5)
    assert obj["prn_yaw_deg"] == pytest.approx(30.0)
    assert obj["prn_pose"] == "frontal"


def test_half_resolution_mesh_keeps_eye_holes_and_positions(synthetic_face, layout):
    from prn_blender.core.geometry import decimate_triangles

    obj = scene.build_face_object(synthetic_face, "half", stride=2, landmarks=False)
    keep, tris = decimate_triangles(layout, 2)
    assert len(obj.data.vertices) == len(keep)
    assert len(obj.data.polygons) == len(tris)
    bpy.context.view_layer.update()
    np.testing.assert_allclose(world_vertices(obj),
                               expected_world(synthetic_face.vertices[keep], synthetic_face),
                               atol=1e-5)


def test_existing_objects_keep_their_names_and_new_ones_get_suffixes(synthetic_face):
    existing = bpy.data.objects.new("face", None)
    bpy.context.scene.collection.objects.link(existing)
    before = {o.name: tuple(o.location) for o in bpy.data.objects}
    obj = scene.build_face_object(synthetic_face, "face")
    assert existing.name == "face"
    assert obj.name != "face" and obj.name.startswith("face")
    for name, location in before.items():
        assert tuple(bpy.data.objects[name].location) == location


def test_failure_midway_leaves_nothing_behind(synthetic_face, monkeypatch):
    counts = (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials),
              len(bpy.data.images), len(bpy.data.collections), len(bpy.data.cameras))

    def broken(*args, **kwargs):
        raise RuntimeError("camera failed")

    monkeypatch.setattr(scene, "_build_camera", broken)
    with pytest.raises(RuntimeError, match="camera failed"):
        scene.build_face_object(synthetic_face, "face", camera=True)
    assert counts == (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials),
                      len(bpy.data.images), len(bpy.data.collections), len(bpy.data.cameras))


def test_remove_face_object_deletes_everything_it_built(synthetic_face):
    counts = (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials),
              len(bpy.data.images), len(bpy.data.collections), len(bpy.data.cameras))
    obj = scene.build_face_object(synthetic_face, "face", camera=True)
    scene.remove_face_object(obj)
    assert counts == (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.materials),
                      len(bpy.data.images), len(bpy.data.collections), len(bpy.data.cameras))


def test_visibility_mask_becomes_an_unlinked_image_node(layout):
    result = make_synthetic_result(layout, with_mask=True)
    obj = scene.build_face_object(result, "masked", landmarks=False)
    nodes = obj.data.materials[0].node_tree.nodes
    mask = next(n for n in nodes if n.type == "TEX_IMAGE" and n.label == "Photo Coverage")
    assert not mask.outputs["Color"].is_linked
    assert mask.image.packed_file is not None


def test_save_and_reload_round_trip(synthetic_face, tmp_path):
    obj = scene.build_face_object(synthetic_face, "face", camera=True)
    bpy.context.view_layer.update()
    verts = world_vertices(obj)
    path = str(tmp_path / "face.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.read_homefile(app_template="")
    assert "face" not in bpy.data.objects
    bpy.ops.wm.open_mainfile(filepath=path)
    obj = bpy.data.objects["face"]
    np.testing.assert_allclose(world_vertices(obj), verts, atol=1e-6)
    assert len(landmark_empties(obj)) == 68
    assert obj["prn_yaw_deg"] == pytest.approx(synthetic_face.pose.yaw_deg)
    image = obj.data.materials[0].node_tree.nodes["Image Texture"].image
    assert image.packed_file is not None
    pixels = np.empty(TEXTURE_SIZE * TEXTURE_SIZE * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    top_left = pixels.reshape(TEXTURE_SIZE, TEXTURE_SIZE, 4)[-1, 0, :3] * 255
    np.testing.assert_allclose(top_left, synthetic_face.texture[0, 0], atol=0.51)
    assert len(scene.face_camera(obj).data.background_images) == 0  # no photo given

