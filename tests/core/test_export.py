"""Exporters: axis convention, winding, and arrays read back from the written files."""

from __future__ import annotations

import json
import struct

import cv2
import numpy as np
import pytest

from prn_blender.core.export import (
    GLB_CHUNK_BIN,
    GLB_CHUNK_JSON,
    GLB_MAGIC,
    export_face_result,
    triangles_for_export,
    vertices_for_export,
    write_glb,
    write_landmarks_json,
    write_obj,
    write_ply,
)
from prn_blender.core.geometry import (
    landmarks_from_position_map,
    mesh_uvs,
    position_map_to_vertices,
    vertex_normals,
)
from prn_blender.core.pose import estimate_pose
from prn_blender.core.result import FaceResult
from tests.core.conftest import pose_ict_neutral


@pytest.fixture(scope="module")
def mesh(synthetic_layout):
    """A small textured mesh in the export frame (metres, Y up, Z towards the viewer)."""
    face = pose_ict_neutral(synthetic_layout, 10.0, 0.0, 0.0, scale_px_per_cm=10.0)
    vertices_px = position_map_to_vertices(face.position_map, synthetic_layout)
    vertices = vertices_for_export(vertices_px, 0.001, origin_px=vertices_px.mean(axis=0))
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return vertices, synthetic_layout.triangles, mesh_uvs(synthetic_layout), texture


def test_export_frame_is_x_right_y_up_z_towards_the_viewer_in_metres():
    points_px = np.array([[10.0, 20.0, 30.0]])
    np.testing.assert_allclose(vertices_for_export(points_px, 0.002), [[0.02, -0.04, 0.06]])
    shifted = vertices_for_export(points_px, 0.002, origin_px=np.array([10.0, 20.0, 30.0]))
    np.testing.assert_allclose(shifted, [[0.0, 0.0, 0.0]], atol=1e-9)


def test_exported_nose_tip_normal_points_towards_the_viewer(ict_layout):
    face = pose_ict_neutral(ict_layout)
    vertices_px = position_map_to_vertices(face.position_map, ict_layout)
    exported = vertices_for_export(vertices_px, 0.001)
    normals = vertex_normals(exported, triangles_for_export(ict_layout.triangles))
    nose_tip_px = landmarks_from_position_map(face.position_map, ict_layout)[30]
    nose = np.argmin(np.linalg.norm(vertices_px - nose_tip_px, axis=1))
    assert normals[nose, 2] > 0.9  # +Z: out of the face, towards the viewer


def _read_obj(path):
    v, vt, f = [], [], []
    for line in path.read_text().splitlines():
        head, *rest = line.split()
        if head == "v":
            v.append([float(x) for x in rest])
        elif head == "vt":
            vt.append([float(x) for x in rest])
        elif head == "f":
            f.append([[int(i) for i in corner.split("/")] for corner in rest])
    return np.array(v), np.array(vt), np.array(f)


def test_obj_round_trips_vertices_uvs_faces_and_texture(tmp_path, mesh):
    vertices, triangles, uvs, texture = mesh
    path = tmp_path / "face.obj"
    write_obj(path, vertices, triangles, uvs, texture)
    v, vt, f = _read_obj(path)
    np.testing.assert_allclose(v, vertices, atol=1e-6)
    np.testing.assert_allclose(vt, uvs, atol=1e-6)
    np.testing.assert_array_equal(f[:, :, 0] - 1, triangles)
    np.testing.assert_array_equal(f[:, :, 1], f[:, :, 0])  # vt index = v index
    text = path.read_text()
    assert "mtllib face.mtl" in text and "usemtl face" in text
    assert "map_Kd face_texture.png" in (tmp_path / "face.mtl").read_text()
    assert not (tmp_path / "face.png").exists()  # a photo face.png beside it stays untouched
    png = cv2.imread(str(tmp_path / "face_texture.png"), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(png, texture)


def test_obj_side_files_have_no_spaces(tmp_path, mesh):
    vertices, triangles, uvs, texture = mesh
    write_obj(tmp_path / "my face.obj", vertices, triangles, uvs, texture)
    assert "mtllib my_face.mtl\n" in (tmp_path / "my face.obj").read_text()
    assert "map_Kd my_face_texture.png" in (tmp_path / "my_face.mtl").read_text()
    assert (tmp_path / "my_face_texture.png").is_file()


def test_obj_without_texture_writes_no_material(tmp_path, mesh):
    vertices, triangles, uvs, _ = mesh
    write_obj(tmp_path / "plain.obj", vertices, triangles, uvs)
    assert "mtllib" not in (tmp_path / "plain.obj").read_text()
    assert not (tmp_path / "plain.mtl").exists()


def _read_glb(path):
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (GLB_MAGIC, 2, len(data))
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == GLB_CHUNK_JSON and json_len % 4 == 0
    gltf = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_type == GLB_CHUNK_BIN and bin_len % 4 == 0
    binary = data[28 + json_len : 28 + json_len + bin_len]
    assert 28 + json_len + bin_len == len(data)
    return gltf, binary


def _accessor(gltf, binary, index):
    acc = gltf["accessors"][index]
    view = gltf["bufferViews"][acc["bufferView"]]
    assert view["byteOffset"] % 4 == 0
    dtype = {5126: np.float32, 5125: np.uint32}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}[acc["type"]]
    raw = binary[view["byteOffset"] : view["byteOffset"] + view["byteLength"]]
    return np.frombuffer(raw, dtype=dtype).reshape(acc["count"], width), acc


def test_glb_round_trips_arrays_with_gltf_uv_convention_and_embedded_texture(tmp_path, mesh):
    vertices, triangles, uvs, texture = mesh
    normals = vertex_normals(vertices, triangles)
    path = tmp_path / "face.glb"
    write_glb(path, vertices, triangles, uvs, texture, normals)
    gltf, binary = _read_glb(path)
    assert gltf["asset"]["version"] == "2.0"
    primitive = gltf["meshes"][0]["primitives"][0]
    position, acc = _accessor(gltf, binary, primitive["attributes"]["POSITION"])
    np.testing.assert_array_equal(position, vertices)
    np.testing.assert_allclose(acc["min"], vertices.min(axis=0), rtol=1e-6)
    np.testing.assert_allclose(acc["max"], vertices.max(axis=0), rtol=1e-6)
    normal, _ = _accessor(gltf, binary, primitive["attributes"]["NORMAL"])
    np.testing.assert_allclose(normal, normals, atol=1e-7)
    st, _ = _accessor(gltf, binary, primitive["attributes"]["TEXCOORD_0"])
    np.testing.assert_allclose(st[:, 0], uvs[:, 0], atol=1e-7)
    np.testing.assert_allclose(st[:, 1], 1.0 - uvs[:, 1], atol=1e-6)  # glTF: t down
    indices, _ = _accessor(gltf, binary, primitive["indices"])
    np.testing.assert_array_equal(indices.reshape(-1, 3), triangles)
    image = gltf["images"][gltf["textures"][0]["source"]]
    assert image["mimeType"] == "image/png"
    view = gltf["bufferViews"][image["bufferView"]]
    png = binary[view["byteOffset"] : view["byteOffset"] + view["byteLength"]]
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(decoded, texture)
    material = gltf["materials"][primitive["material"]]
    assert material["pbrMetallicRoughness"]["baseColorTexture"]["index"] == 0


def test_glb_without_texture_or_normals_has_neither(tmp_path, mesh):
    vertices, triangles, uvs, _ = mesh
    write_glb(tmp_path / "plain.glb", vertices, triangles, uvs)
    gltf, _ = _read_glb(tmp_path / "plain.glb")
    primitive = gltf["meshes"][0]["primitives"][0]
    assert "NORMAL" not in primitive["attributes"] and "material" not in primitive
    assert "images" not in gltf


def test_ply_round_trips_vertices_colours_and_faces(tmp_path, mesh):
    vertices, triangles, _, _ = mesh
    colours = np.random.default_rng(1).integers(0, 256, (len(vertices), 3), dtype=np.uint8)
    path = tmp_path / "face.ply"
    write_ply(path, vertices, triangles, colours)
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii")
    assert f"element vertex {len(vertices)}" in header
    assert f"element face {len(triangles)}" in header
    vert_dtype = [("xyz", "<f4", (3,)), ("rgb", "u1", (3,))]
    vert = np.frombuffer(data, dtype=vert_dtype, count=len(vertices), offset=end)
    face = np.frombuffer(data, dtype=[("n", "u1"), ("v", "<i4", (3,))],
                         offset=end + vert.nbytes)
    np.testing.assert_array_equal(vert["xyz"], vertices)
    np.testing.assert_array_equal(vert["rgb"], colours)
    assert (face["n"] == 3).all()
    np.testing.assert_array_equal(face["v"], triangles)


def test_landmarks_json_keeps_values_and_metadata(tmp_path):
    landmarks = np.arange(68 * 3, dtype=np.float32).reshape(68, 3) / 7
    path = tmp_path / "landmarks.json"
    write_landmarks_json(path, landmarks, pose_angles_deg=(10.0, -5.0, 2.5),
                         metres_per_px=0.0005, photo_size=(640, 480))
    data = json.loads(path.read_text())
    np.testing.assert_allclose(data["landmarks_px"], landmarks, atol=5e-4)
    assert data["pose_deg"] == {"yaw": 10.0, "pitch": -5.0, "roll": 2.5}
    assert data["metres_per_px"] == 0.0005 and data["photo_size"] == [640, 480]


def _face_result(layout) -> FaceResult:
    face = pose_ict_neutral(layout, 20.0, 0.0, 0.0)
    vertices = position_map_to_vertices(face.position_map, layout)
    texture = np.zeros((64, 64, 3), np.uint8)
    texture[:, :, 0] = np.arange(64, dtype=np.uint8)[None, :] * 4  # red = 4 x column
    return FaceResult(
        vertices=vertices, triangles=layout.triangles, uvs=mesh_uvs(layout), texture=texture,
        texture_mask=None, landmarks=landmarks_from_position_map(face.position_map, layout),
        pose=estimate_pose(vertices, layout), box=np.array([0, 0, 1, 1], np.float32),
        position_map=face.position_map, photo_size=(640, 480), layout_id=layout.layout_id,
    )


def test_export_face_result_picks_the_format_from_the_suffix(tmp_path, synthetic_layout):
    result = _face_result(synthetic_layout)
    for suffix in (".obj", ".glb", ".ply", ".json"):
        export_face_result(tmp_path / f"face{suffix}", result)
    v, _, _ = _read_obj(tmp_path / "face.obj")
    # Metres at 9 cm between the outer eye corners, centred on the bounding box.
    eyes = vertices_for_export(result.landmarks[[36, 45]], result.metres_per_px)
    assert np.linalg.norm(eyes[1] - eyes[0]) == pytest.approx(0.09, rel=1e-5)
    np.testing.assert_allclose((v.min(axis=0) + v.max(axis=0)) / 2, 0.0, atol=1e-6)
    gltf, _ = _read_glb(tmp_path / "face.glb")
    assert "NORMAL" in gltf["meshes"][0]["primitives"][0]["attributes"]
    data = (tmp_path / "face.ply").read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    vert = np.frombuffer(data, dtype=[("xyz", "<f4", (3,)), ("rgb", "u1", (3,))],
                         count=len(result.vertices), offset=end)
    expected_red = np.clip(result.uvs[:, 0] * 64 - 0.5, 0, 63) * 4
    np.testing.assert_allclose(vert["rgb"][:, 0], expected_red, atol=1.0)
    landmarks = json.loads((tmp_path / "face.json").read_text())
    assert landmarks["pose_deg"]["yaw"] == pytest.approx(20.0, abs=0.01)
    # landmarks_m are in the exported mesh's frame: 9 cm between the outer eye corners, and
    # offset from any .obj vertex by exactly that vertex's photo-px offset, y flipped, scaled.
    on_mesh = np.asarray(landmarks["landmarks_m"])
    assert np.linalg.norm(on_mesh[45] - on_mesh[36]) == pytest.approx(0.09, rel=1e-4)
    k = len(v) // 2
    expected = v[k] + (result.landmarks - result.vertices[k]) * [1, -1, 1] * result.metres_per_px
    np.testing.assert_allclose(on_mesh, expected, atol=2e-6)
    np.testing.assert_allclose(landmarks["mesh_origin_px"],
                               (result.vertices.min(axis=0) + result.vertices.max(axis=0)) / 2,
                               atol=1e-3)
    with pytest.raises(ValueError, match="use one of"):
        export_face_result(tmp_path / "face.fbx", result)
