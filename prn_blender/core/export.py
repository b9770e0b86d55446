"""Mesh and landmark files: OBJ (+ MTL + PNG), glTF 2.0 binary (.glb), PLY, landmark JSON.

Export frame (glTF's, also used for OBJ and PLY): metres, +Y up, +Z towards the viewer,
+X to the viewer's right. From photo pixels (x right, y down, z towards the camera):
X = x s, Y = -y s, Z = z s with s = metres per pixel (`vertices_for_export`).

Winding: the layout's triangles give outward normals in the Blender frame (X = x, Y = -z,
Z = -y). The export frame is Blender's turned by a proper rotation (Blender Z up -> Y up:
(X, Y, Z)_export = (X, Z, -Y)_blender), so the same winding stays outward: a frontal face's
nose-tip normal points to +Z. `triangles_for_export` keeps it (checked by a test).

UVs: ours have v up (OBJ's convention). glTF's TEXCOORD_0 has t down: t = 1 - v.
The texture image is written with row 0 at the top (v = 1) in both formats.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import cv2
import numpy as np

from .geometry import bilinear_sample, vertex_normals
from .result import FaceResult

GLB_MAGIC = 0x46546C67  # "glTF"
GLB_CHUNK_JSON = 0x4E4F534A  # "JSON"
GLB_CHUNK_BIN = 0x004E4942  # "BIN\0"
GL_FLOAT, GL_UNSIGNED_INT = 5126, 5125
GL_ARRAY_BUFFER, GL_ELEMENT_ARRAY_BUFFER = 34962, 34963


def vertices_for_export(
    vertices_px: np.ndarray, metres_per_px: float, origin_px: np.ndarray | None = None
) -> np.ndarray:
    """(N, 3) photo px (x right, y down, z towards the camera) -> (N, 3) float32 metres in
    the export frame (X = x, Y = -y, Z = z, times `metres_per_px`), after subtracting
    `origin_px` (photo px; None = no shift)."""
    p = np.asarray(vertices_px, dtype=np.float64)
    if origin_px is not None:
        p = p - np.asarray(origin_px, dtype=np.float64)
    return (p * np.array([1.0, -1.0, 1.0]) * float(metres_per_px)).astype(np.float32)


def triangles_for_export(triangles: np.ndarray) -> np.ndarray:
    """Layout triangles (outward in the Blender frame) -> (T, 3) uint32 triangles outward in
    the export frame: the same corner order (the frames differ by a proper rotation)."""
    return np.ascontiguousarray(triangles, dtype=np.uint32)


def obj_side_files(obj_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The material library and texture `write_obj` writes beside a textured OBJ; spaces in
    the name become '_' (OBJ's `mtllib` takes a space-separated list of files)."""
    path = Path(obj_path)
    stem = "_".join(path.stem.split()) or "face"
    return path.with_name(f"{stem}.mtl"), path.with_name(f"{stem}_texture.png")


def write_obj(
    path: str | os.PathLike[str], vertices: np.ndarray, triangles: np.ndarray,
    uvs: np.ndarray, texture: np.ndarray | None = None,
) -> None:
    """Wavefront OBJ with one `vt` per vertex and faces `f v/vt ...` (1-based).

    vertices: (N, 3) export frame (`vertices_for_export`); triangles: (T, 3) layout winding;
    uvs: (N, 2) v up. With `texture` ((S, S, 3) uint8 RGB), also writes <stem>.mtl and
    <stem>_texture.png beside the OBJ and references them (`obj_side_files`; not <stem>.png,
    which would be the photo itself when it was a PNG in the same folder)."""
    path = Path(path)
    v = np.asarray(vertices, dtype=np.float64)
    vt = np.asarray(uvs, dtype=np.float64)
    f = triangles_for_export(triangles).astype(np.int64) + 1
    if vt.shape[0] != v.shape[0]:
        raise ValueError(f"need one UV per vertex: {vt.shape[0]} UVs for {v.shape[0]} vertices")
    parts = ["# prn-blender face mesh: metres, +Y up, +Z towards the viewer\n"]
    if texture is not None:
        mtl_path, png_path = obj_side_files(path)
        _write_png(png_path, texture)
        mtl_path.write_text(
            "newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\n"
            f"map_Kd {png_path.name}\n", encoding="utf-8"
        )
        parts.append(f"mtllib {mtl_path.name}\nusemtl face\n")
    # One %-format per block (C speed, no per-vertex Python loop).
    parts.append(("v %.6f %.6f %.6f\n" * len(v)) % tuple(v.ravel()))
    parts.append(("vt %.6f %.6f\n" * len(vt)) % tuple(vt.ravel()))
    parts.append(("f %d/%d %d/%d %d/%d\n" * len(f)) % tuple(np.repeat(f, 2, axis=1).ravel()))
    path.write_text("".join(parts), encoding="utf-8")


def write_glb(
    path: str | os.PathLike[str], vertices: np.ndarray, triangles: np.ndarray,
    uvs: np.ndarray, texture: np.ndarray | None = None, normals: np.ndarray | None = None,
) -> None:
    """glTF 2.0 binary: one mesh, one primitive (POSITION with min/max, optional NORMAL,
    TEXCOORD_0 with t = 1 - v, uint32 indices) and, with `texture`, a material whose base
    colour is the texture as an embedded PNG. Inputs as in `write_obj`; normals (N, 3) in
    the export frame. Buffer views are 4-byte aligned."""
    v = np.ascontiguousarray(vertices, dtype=np.float32)
    idx = triangles_for_export(triangles)
    st = np.asarray(uvs, dtype=np.float32) * np.array([1.0, -1.0], np.float32) + np.array(
        [0.0, 1.0], np.float32
    )
    blobs: list[bytes] = []
    views: list[dict] = []
    accessors: list[dict] = []

    def add_view(data: bytes, target: int | None = None) -> int:
        offset = sum(len(b) for b in blobs)
        view: dict = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        blobs.append(data + b"\0" * (-len(data) % 4))
        views.append(view)
        return len(views) - 1

    def add_accessor(array: np.ndarray, kind: str, component: int, target: int,
                     bounds: bool = False) -> int:
        accessor: dict = {
            "bufferView": add_view(array.tobytes(), target),
            "componentType": component,
            "count": int(array.shape[0]),
            "type": kind,
        }
        if bounds:
            accessor["min"] = [float(x) for x in array.min(axis=0)]
            accessor["max"] = [float(x) for x in array.max(axis=0)]
        accessors.append(accessor)
        return len(accessors) - 1

    attributes = {"POSITION": add_accessor(v, "VEC3", GL_FLOAT, GL_ARRAY_BUFFER, bounds=True)}
    if normals is not None:
        n = np.ascontiguousarray(normals, dtype=np.float32)
        attributes["NORMAL"] = add_accessor(n, "VEC3", GL_FLOAT, GL_ARRAY_BUFFER)
    attributes["TEXCOORD_0"] = add_accessor(
        np.ascontiguousarray(st), "VEC2", GL_FLOAT, GL_ARRAY_BUFFER
    )
    indices = add_accessor(idx.reshape(-1), "SCALAR", GL_UNSIGNED_INT, GL_ELEMENT_ARRAY_BUFFER)
    primitive: dict = {"attributes": attributes, "indices": indices, "mode": 4}
    gltf: dict = {
        "asset": {"version": "2.0", "generator": "prn-blender"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "face"}],
        "meshes": [{"name": "face", "primitives": [primitive]}],
    }
    if texture is not None:
        png = _encode_png(texture)
        gltf["images"] = [{"bufferView": add_view(png), "mimeType": "image/png"}]
        gltf["samplers"] = [{"magFilter": 9729, "minFilter": 9987,
                             "wrapS": 33071, "wrapT": 33071}]
        gltf["textures"] = [{"source": 0, "sampler": 0}]
        gltf["materials"] = [{
            "name": "face",
            "pbrMetallicRoughness": {
                "baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": 0.8,
            },
        }]
        primitive["material"] = 0
    gltf["accessors"] = accessors
    gltf["bufferViews"] = views
    binary = b"".join(blobs)
    gltf["buffers"] = [{"byteLength": len(binary)}]
    json_bytes = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    json_bytes += b" " * (-len(json_bytes) % 4)
    total = 12 + 8 + len(json_bytes) + 8 + len(binary)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<III", GLB_MAGIC, 2, total))
        fh.write(struct.pack("<II", len(json_bytes), GLB_CHUNK_JSON))
        fh.write(json_bytes)
        fh.write(struct.pack("<II", len(binary), GLB_CHUNK_BIN))
        fh.write(binary)


def write_ply(
    path: str | os.PathLike[str], vertices: np.ndarray, triangles: np.ndarray,
    colors: np.ndarray | None = None,
) -> None:
    """Binary little-endian PLY: float x, y, z (+ uchar red, green, blue from (N, 3) uint8
    RGB `colors`) and faces as uchar-counted int lists. Inputs as in `write_obj`."""
    v = np.asarray(vertices, dtype=np.float32)
    f = triangles_for_export(triangles).astype(np.int32)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    header = ["ply", "format binary_little_endian 1.0", "comment prn-blender face mesh",
              f"element vertex {len(v)}", "property float x", "property float y",
              "property float z"]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header += [f"element face {len(f)}", "property list uchar int vertex_indices",
               "end_header"]
    vert = np.zeros(len(v), dtype=fields)
    vert["x"], vert["y"], vert["z"] = v[:, 0], v[:, 1], v[:, 2]
    if colors is not None:
        c = np.asarray(colors, dtype=np.uint8)
        vert["red"], vert["green"], vert["blue"] = c[:, 0], c[:, 1], c[:, 2]
    face = np.zeros(len(f), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    face["n"], face["v"] = 3, f
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(vert.tobytes())
        fh.write(face.tobytes())


def write_landmarks_json(
    path: str | os.PathLike[str], landmarks: np.ndarray, *,
    pose_angles_deg: tuple[float, float, float] | None = None,
    metres_per_px: float | None = None, photo_size: tuple[int, int] | None = None,
    mesh_origin_px: np.ndarray | None = None,
) -> None:
    """The 68 landmarks (photo px: x right, y down, z depth towards the camera; iBUG order,
    0-based) as JSON, with the optional head pose (yaw, pitch, roll degrees), scale and
    photo (width, height). With `metres_per_px` and `mesh_origin_px` (the photo-px point the
    exported meshes are centred on) also `landmarks_m`: the landmarks in the meshes' own
    frame (metres, +Y up, +Z towards the viewer), so they sit on the .obj/.glb/.ply."""
    lm = np.asarray(landmarks, dtype=np.float64)
    data: dict = {
        "frame": "photo pixels: x right, y down, z depth towards the camera; iBUG 68 order",
        "landmarks_px": np.round(lm, 3).tolist(),
    }
    if pose_angles_deg is not None:
        data["pose_deg"] = dict(zip(("yaw", "pitch", "roll"),
                                    (float(a) for a in pose_angles_deg), strict=True))
    if metres_per_px is not None:
        data["metres_per_px"] = float(metres_per_px)
        if mesh_origin_px is not None:
            origin = np.asarray(mesh_origin_px, dtype=np.float64).reshape(3)
            data["mesh_origin_px"] = np.round(origin, 4).tolist()
            data["landmarks_m"] = np.round(
                vertices_for_export(lm, metres_per_px, origin_px=origin), 6).tolist()
    if photo_size is not None:
        data["photo_size"] = [int(photo_size[0]), int(photo_size[1])]
    Path(path).write_text(json.dumps(data, indent=1), encoding="utf-8")


EXPORT_SUFFIXES = (".obj", ".glb", ".ply", ".json")


def export_face_result(path: str | os.PathLike[str], result: FaceResult) -> None:
    """Write a reconstructed face in the format its suffix names: .obj (+ .mtl + _texture.png),
    .glb (with normals and the texture), .ply (vertex colours from the texture) or .json
    (landmarks in photo px and, as `landmarks_m`, in the meshes' frame; pose, scale). Meshes
    are in metres at the assumed-adult-face scale (`FaceResult.metres_per_px`), origin at the
    centre of the vertices' bounding box (as in Blender), export frame (+Y up, +Z towards the
    viewer)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise ValueError(f"cannot export to '{path.name}': use one of {', '.join(EXPORT_SUFFIXES)}")
    scale = result.metres_per_px
    v = np.asarray(result.vertices, dtype=np.float64)
    origin = (np.nanmin(v, axis=0) + np.nanmax(v, axis=0)) / 2.0
    if suffix == ".json":
        pose = result.pose
        write_landmarks_json(path, result.landmarks,
                             pose_angles_deg=(pose.yaw_deg, pose.pitch_deg, pose.roll_deg),
                             metres_per_px=scale, photo_size=result.photo_size,
                             mesh_origin_px=origin)
        return
    vertices = vertices_for_export(v, scale, origin_px=origin)
    if suffix == ".obj":
        write_obj(path, vertices, result.triangles, result.uvs, result.texture)
    elif suffix == ".glb":
        normals = vertex_normals(vertices, triangles_for_export(result.triangles))
        write_glb(path, vertices, result.triangles, result.uvs, result.texture, normals)
    else:
        write_ply(path, vertices, result.triangles, _colours_at_uvs(result.texture, result.uvs))


def _colours_at_uvs(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB of the (S, S, 3) texture at each UV (bilinear; v up, row 0 = v 1)."""
    tex = np.asarray(texture)
    size_y, size_x = tex.shape[:2]
    uv = np.asarray(uvs, dtype=np.float64)
    texel_xy = np.stack([uv[:, 0] * size_x - 0.5, (1.0 - uv[:, 1]) * size_y - 0.5], axis=1)
    colours = bilinear_sample(tex[:, :, :3], texel_xy)
    return np.clip(np.round(colours), 0, 255).astype(np.uint8)


def _encode_png(image_rgb: np.ndarray) -> bytes:
    img = np.asarray(image_rgb, dtype=np.uint8)
    if img.ndim == 3 and img.shape[2] >= 3:
        img = np.ascontiguousarray(img[:, :, [2, 1, 0]])
    ok, buffer = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"cannot encode a texture of shape {image_rgb.shape} as PNG")
    return buffer.tobytes()


def _write_png(path: Path, image_rgb: np.ndarray) -> None:
    path.write_bytes(_encode_png(image_rgb))
