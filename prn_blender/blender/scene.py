"""FaceResult -> Blender datablocks: mesh, UV map, material with the packed texture, 68 landmark
empties, optional orthographic camera. bpy + numpy only (no operator needed: the CLI demo calls
`build_face_object` and saves the file).

World frame (DESIGN.md section 3): Z up, the face looks along -Y, metres. Photo pixels are taken
relative to the photo centre C = ((W-1)/2, (H-1)/2) (pixel centres at whole numbers), then
through `frames.photo_to_blender` at the face's own scale s (outer eye corners 9 cm apart):
world = photo_to_blender(p_px - C, s). So the photo centre lies on the world Y axis and an
orthographic camera on the Y axis sees the mesh exactly over the photo. Further faces of the
same photo keep their own metric size about their own centre c but are placed at the first
face's scale s0: world = photo_to_blender(p_px - c, s) + photo_to_blender(c - C, s0), so each
sits where the photo shows it (exactly over it when s = s0). `offset_m` shifts a whole photo
(faces and camera) to lay several photos side by side.
The object's origin is the centre of its vertices' bounding box; vertices, loops, polygons and
the UV layer are filled with `foreach_set` from contiguous 1-D arrays.

All datablocks are created first and linked into the scene last; on any error everything this
call created is removed again, so the scene is never left half-built and nothing that existed
before is modified or renamed.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import bpy
import numpy as np

from ..core.exif import file_orientation, make_upright, upright_size
from ..core.frames import photo_to_blender
from ..core.pose import frontalize
from ..core.result import FaceResult

PROP_PREFIX = "prn_"
"""Custom properties this add-on writes on the face object (and reads back)."""
EMPTY_SIZE_M = 0.002
"""Display radius of the landmark empties (2 mm)."""
CAMERA_DISTANCE_M = 1.0
"""How far in front of the nearest vertex the orthographic camera sits."""
PNG_COMPRESSION = 1
"""zlib level of the packed texture: 1 is several times faster than 6 for ~10 % more bytes."""

LANDMARK_NAMES: tuple[str, ...] = (
    *(f"jaw.R.{i}" for i in range(8)),  # 0-7: subject's right ear side (image left) to chin
    "chin",  # 8
    *(f"jaw.L.{7 - i}" for i in range(8)),  # 9-16: chin to left ear side
    *(f"brow.R.{i}" for i in range(5)),  # 17-21: outer to inner
    *(f"brow.L.{4 - i}" for i in range(5)),  # 22-26: inner to outer
    "nose.bridge.0", "nose.bridge.1", "nose.bridge.2", "nose.tip",  # 27-30
    "nostril.R", "nose.base.R", "nose.base", "nose.base.L", "nostril.L",  # 31-35
    "eye.R.outer", "eye.R.upper.outer", "eye.R.upper.inner",  # 36-38
    "eye.R.inner", "eye.R.lower.inner", "eye.R.lower.outer",  # 39-41
    "eye.L.inner", "eye.L.upper.inner", "eye.L.upper.outer",  # 42-44
    "eye.L.outer", "eye.L.lower.outer", "eye.L.lower.inner",  # 45-47
    "mouth.corner.R", "lip.upper.R.2", "lip.upper.R.1", "lip.upper",  # 48-51
    "lip.upper.L.1", "lip.upper.L.2", "mouth.corner.L",  # 52-54
    "lip.lower.L.2", "lip.lower.L.1", "lip.lower", "lip.lower.R.1", "lip.lower.R.2",  # 55-59
    "mouth.inner.R", "lip.inner.upper.R", "lip.inner.upper", "lip.inner.upper.L",  # 60-63
    "mouth.inner.L", "lip.inner.lower.L", "lip.inner.lower", "lip.inner.lower.R",  # 64-67
)
"""Meaning of the 68 iBUG landmarks; L/R are the subject's left/right (Blender's .L/.R)."""
assert len(LANDMARK_NAMES) == 68

MAX_NAME = 63
"""Blender's ID name limit in bytes."""


def landmark_object_name(face_name: str, index: int) -> str:
    """Name of landmark empty `index` of the face object `face_name`, e.g. 'photo.30.nose.tip'.
    The face name is shortened so the whole name fits Blender's 63-byte limit."""
    suffix = f".{index:02d}.{LANDMARK_NAMES[index]}"
    return _fit_name(face_name, MAX_NAME - len(suffix)) + suffix


def _fit_name(name: str, max_bytes: int) -> str:
    data = name.encode("utf-8")[:max_bytes]
    return data.decode("utf-8", errors="ignore")


def blender_frame(result: FaceResult, *, frontal: bool = False,
                  photo_metres_per_px: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The face's vertices and landmarks in the world frame described in the module docstring.

    Returns (vertices (N, 3) float32 m, landmarks (68, 3) float32 m). With `frontal`, the head
    rotation is undone about the pose's centre first (`pose.frontalize`), so the face looks
    straight along -Y, upright. `photo_metres_per_px`: the scale s0 that places the face in
    its photo (None = its own scale: the first face of a photo)."""
    vertices_px = np.asarray(result.vertices, dtype=np.float32)
    landmarks_px = np.asarray(result.landmarks, dtype=np.float32)
    if frontal:
        vertices_px = frontalize(vertices_px, result.pose)
        landmarks_px = frontalize(landmarks_px, result.pose)
    scale = result.metres_per_px
    centre_px = photo_centre_px(result)
    if photo_metres_per_px is None or photo_metres_per_px == scale:
        return (photo_to_blender(vertices_px - centre_px, scale),
                photo_to_blender(landmarks_px - centre_px, scale))
    face_centre = bounding_box_centre(vertices_px).astype(np.float32)
    face_centre[2] = 0.0  # depth stays at the face's own scale
    placement = photo_to_blender((face_centre - centre_px)[None], photo_metres_per_px)[0]
    return (photo_to_blender(vertices_px - face_centre, scale) + placement,
            photo_to_blender(landmarks_px - face_centre, scale) + placement)


def photo_centre_px(result: FaceResult) -> np.ndarray:
    """(3,) float32 photo pixels: the centre of the photo, ((W-1)/2, (H-1)/2, 0)."""
    width, height = result.photo_size
    return np.array([(width - 1) / 2.0, (height - 1) / 2.0, 0.0], dtype=np.float32)


def photo_extent_x_m(results: list[FaceResult], *, frontal: bool = False) -> tuple[float, float]:
    """(min, max) world X in metres of one photo's faces (at the first face's placement scale):
    what `offset_m` needs to lay photos side by side."""
    s0 = results[0].metres_per_px
    low, high = math.inf, -math.inf
    for result in results:
        vertices, _ = blender_frame(result, frontal=frontal, photo_metres_per_px=s0)
        x = vertices[np.isfinite(vertices[:, 0]), 0]
        if x.size:
            low, high = min(low, float(x.min())), max(high, float(x.max()))
    return low, high


def bounding_box_centre(points: np.ndarray) -> np.ndarray:
    """(3,) float64 centre of the axis-aligned bounding box of finite (N, 3) points."""
    p = np.asarray(points, dtype=np.float64)
    p = p[np.isfinite(p).all(axis=1)]
    if p.shape[0] == 0:
        raise ValueError("the face has no finite vertices")
    return (p.min(axis=0) + p.max(axis=0)) / 2.0


def png_bytes(rgb: np.ndarray, level: int = PNG_COMPRESSION) -> bytes:
    """Encode an (H, W, 3) or (H, W) uint8 image (row 0 = top) as PNG with zlib only.

    Every row uses PNG's "Up" filter (difference to the row above: smaller and faster to
    compress for photos). Blender's own `Image.pack()` of generated pixels re-encodes at a slow
    default level; packing these bytes is the same file format, faster. zlib releases the GIL,
    so `build_face_object` encodes on a thread while it fills the mesh."""
    image = np.ascontiguousarray(rgb, dtype=np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    height, width, channels = image.shape
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = image.reshape(height, -1)
    raw = np.empty((height, width * channels + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # modulo 256, as PNG defines

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + chunk(b"IEND", b""))


class _Created:
    """Datablocks made by one build, removed again (in reverse order) if the build fails."""

    def __init__(self) -> None:
        self.items: list[bpy.types.ID] = []

    def add(self, item: bpy.types.ID) -> bpy.types.ID:
        self.items.append(item)
        return item

    def remove_all(self) -> None:
        collections = {
            bpy.types.Object: bpy.data.objects,
            bpy.types.Mesh: bpy.data.meshes,
            bpy.types.Material: bpy.data.materials,
            bpy.types.Image: bpy.data.images,
            bpy.types.Camera: bpy.data.cameras,
            bpy.types.Collection: bpy.data.collections,
        }
        for item in reversed(self.items):
            for kind, data in collections.items():
                if isinstance(item, kind):
                    try:
                        data.remove(item)
                    except ReferenceError:  # already gone with its owner
                        pass
                    break
        self.items.clear()


@contextmanager
def _rollback_on_error() -> Iterator[_Created]:
    created = _Created()
    try:
        yield created
    except BaseException:
        created.remove_all()
        raise


TEXTURE_FOLDER = "//textures/"
"""Where the packed images' file paths point (relative to the .blend): File > External Data >
Unpack writes them there, never over the photo (a photo 'face.png' beside the .blend)."""


def _packed_image(name: str, rgb: np.ndarray, created: _Created,
                  data: bytes | None = None, file_suffix: str = "") -> bpy.types.Image:
    """A Blender image holding `rgb` ((H, W, 3) or (H, W) uint8, row 0 = top) as a packed PNG
    (`data`: its `png_bytes`, if already encoded), its path
    //textures/<image name><file_suffix>.png."""
    height, width = rgb.shape[:2]
    data = png_bytes(rgb) if data is None else data
    image = created.add(bpy.data.images.new(name, width, height, alpha=False))
    image.pack(data=data, data_len=len(data))
    image.source = "FILE"
    image.filepath_raw = TEXTURE_FOLDER + _safe_filename(image.name + file_suffix) + ".png"
    image.file_format = "PNG"
    return image


def _upright_photo(photo_path: str, created: _Created,
                   expected_size: tuple[int, int]) -> bpy.types.Image | None:
    """The photo as a packed image, turned upright by its EXIF orientation like the decoder
    the reconstruction used (core.exif); Blender's own loader ignores the tag. None (and
    nothing left behind) when the file's upright size is not `expected_size`, the (width,
    height) that was reconstructed: the file changed since, and a background of another
    size would not line up with the mesh."""
    photo = created.add(bpy.data.images.load(photo_path, check_existing=False))
    orientation = file_orientation(photo_path)
    if upright_size(*photo.size, orientation) != tuple(expected_size):
        bpy.data.images.remove(photo)
        created.items.remove(photo)
        return None
    if orientation == 1:
        photo.pack()
        return photo
    width, height = photo.size
    rgba = np.empty(width * height * 4, dtype=np.float32)
    photo.pixels.foreach_get(rgba)
    stored = rgba.reshape(height, width, 4)[::-1, :, :3]  # Blender rows run bottom-up
    rgb = np.clip(stored * 255.0 + 0.5, 0, 255).astype(np.uint8)
    name = photo.name
    bpy.data.images.remove(photo)
    created.items.remove(photo)
    return _packed_image(name, np.ascontiguousarray(make_upright(rgb, orientation)), created,
                         file_suffix="_upright")


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "texture"


def _build_mesh(
    name: str, vertices_m: np.ndarray, triangles: np.ndarray, uvs: np.ndarray,
    created: _Created,
) -> bpy.types.Mesh:
    """Triangle mesh from (N, 3) float32 m, (T, 3) int indices, (N, 2) per-vertex UVs."""
    vertices = np.ascontiguousarray(vertices_m, dtype=np.float32).reshape(-1)
    loops = np.ascontiguousarray(triangles, dtype=np.int32).reshape(-1)
    n_tris = int(triangles.shape[0])
    mesh = created.add(bpy.data.meshes.new(name))
    mesh.vertices.add(vertices.size // 3)
    mesh.loops.add(loops.size)
    mesh.polygons.add(n_tris)
    # Generic attributes take a buffer in one memcpy; the legacy MeshVertex / MeshLoop /
    # MeshUVLoop collections convert element by element (measured 0.2 ms vs 8-60 ms here).
    _set_attribute(mesh, "position", "vector", vertices, mesh.vertices, "co")
    _set_attribute(mesh, ".corner_vert", "value", loops, mesh.loops, "vertex_index")
    mesh.polygons.foreach_set("loop_start", np.arange(0, loops.size, 3, dtype=np.int32))
    uv_layer = mesh.uv_layers.new(name="UVMap")
    loop_uvs = np.ascontiguousarray(np.asarray(uvs, dtype=np.float32)[loops]).reshape(-1)
    _set_attribute(mesh, uv_layer.name, "vector", loop_uvs, uv_layer.data, "uv")
    mesh.update()
    mesh.shade_smooth()
    return mesh


def _set_attribute(
    mesh: bpy.types.Mesh, attribute: str, field: str, values: np.ndarray,
    fallback: bpy.types.bpy_prop_collection, fallback_field: str,
) -> None:
    """foreach_set through the generic attribute `attribute` if the mesh has it, else through
    the legacy collection (older Blender versions name attributes differently)."""
    if attribute in mesh.attributes:
        mesh.attributes[attribute].data.foreach_set(field, values)
    else:
        fallback.foreach_set(fallback_field, values)


def _build_material(
    name: str, result: FaceResult, created: _Created, texture_png: bytes | None = None,
) -> bpy.types.Material:
    """Principled BSDF with the face texture (packed PNG) as base colour; the visibility mask,
    when present, as a second (unlinked) image node labelled 'Photo Coverage' (white where the
    texture holds the photo's colour, seen directly or mirrored)."""
    material = created.add(bpy.data.materials.new(name))
    if material.node_tree is None:  # Blender < 5: nodes are opt-in
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        output = next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None)
        output = output or nodes.new("ShaderNodeOutputMaterial")
        links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
    bsdf.inputs["Roughness"].default_value = 0.6
    texture_node = nodes.new("ShaderNodeTexImage")
    texture_node.label = "Photo texture"
    texture_node.image = _packed_image(name, result.texture, created, texture_png,
                                       file_suffix="_texture")
    texture_node.location = (bsdf.location.x - 400.0, bsdf.location.y)
    links.new(texture_node.outputs["Color"], bsdf.inputs["Base Color"])
    if result.texture_mask is not None:
        mask_node = nodes.new("ShaderNodeTexImage")
        mask_node.label = "Photo Coverage"
        mask_node.image = _packed_image(f"{name} coverage", result.texture_mask, created)
        mask_node.image.colorspace_settings.name = "Non-Color"
        mask_node.location = (bsdf.location.x - 400.0, bsdf.location.y - 300.0)
    return material


def _build_camera(
    name: str, result: FaceResult, nearest_y_m: float, photo_path: str | None,
    created: _Created, scale: float, offset_m: np.ndarray,
) -> bpy.types.Object:
    """Orthographic camera on the photo's axis (the world Y axis + `offset_m`) looking along +Y
    (up = +Z), ortho_scale = the photo's larger side in metres at `scale` (the photo's
    placement scale), the photo as background image: the mesh overlays the photo."""
    width, height = result.photo_size
    camera_data = created.add(bpy.data.cameras.new(name))
    camera_data.type = "ORTHO"
    camera_data.ortho_scale = float(max(width, height) * scale)
    camera_data.sensor_fit = "AUTO"
    camera_data.clip_start = 0.01
    camera_data.clip_end = 100.0
    photo = None
    if photo_path and os.path.isfile(photo_path):
        photo = _upright_photo(photo_path, created, (int(width), int(height)))
    if photo is not None:
        background = camera_data.background_images.new()
        background.image = photo
        background.alpha = 1.0
        background.display_depth = "BACK"
        background.frame_method = "FIT"
        camera_data.show_background_images = True
    camera = created.add(bpy.data.objects.new(name, camera_data))
    camera.location = (float(offset_m[0]), float(nearest_y_m) - CAMERA_DISTANCE_M,
                       float(offset_m[2]))
    camera.rotation_euler = (math.pi / 2.0, 0.0, 0.0)  # local -Z (view) -> +Y, local +Y -> +Z
    camera["prn_photo_width_px"] = int(width)
    camera["prn_photo_height_px"] = int(height)
    return camera


def _store_properties(
    obj: bpy.types.Object, result: FaceResult, photo_path: str | None, frontal: bool
) -> None:
    scale = result.metres_per_px
    obj["prn_pixels_per_metre"] = float(1.0 / scale)
    obj["prn_yaw_deg"] = float(result.pose.yaw_deg)
    obj["prn_pitch_deg"] = float(result.pose.pitch_deg)
    obj["prn_roll_deg"] = float(result.pose.roll_deg)
    obj["prn_pose"] = "frontal" if frontal else "photo"
    obj["prn_projection"] = "orthographic"
    # PRN is weak-perspective: no focal length can be estimated; 0 records "orthographic".
    obj["prn_focal_length_px"] = 0.0
    obj["prn_photo_size_px"] = [int(v) for v in result.photo_size]
    obj["prn_face_box_px"] = [float(v) for v in np.asarray(result.box).reshape(-1)]
    obj["prn_layout_id"] = str(result.layout_id)
    if photo_path:
        obj["prn_photo"] = str(photo_path)


def build_face_object(
    result: FaceResult, name: str, *, landmarks: bool = True, camera: bool = False,
    photo_path: str | os.PathLike[str] | None = None, frontal: bool = False,
    collection: bpy.types.Collection | None = None, stride: int = 1,
    scene: bpy.types.Scene | None = None, photo_metres_per_px: float | None = None,
    offset_m: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> bpy.types.Object:
    """Build one reconstructed face into the scene and return its mesh object.

    Creates a new collection `name` (inside `collection`, default the scene's master
    collection) holding the mesh object `name` (smooth, UV map 'UVMap', material with the packed
    texture), optionally a child collection '<name> landmarks' with 68 empties parented to the
    mesh (named by meaning, see `LANDMARK_NAMES`) and an orthographic camera '<name> camera'
    with the photo as background. Custom properties on the object: prn_pixels_per_metre,
    prn_yaw_deg / prn_pitch_deg / prn_roll_deg (the photo pose, `HeadPose` convention),
    prn_focal_length_px (0: orthographic), prn_photo_size_px, prn_face_box_px, prn_photo.

    frontal: undo the head rotation (the camera, if any, then no longer overlays the photo).
    photo_metres_per_px: the placement scale of the face's photo (a further face of a photo:
    the first face's `metres_per_px`; None = this face's own). offset_m: world shift of the
    face and its camera (photos side by side).
    stride: mesh resolution; 1 = the full texel grid, 2 or 4 = `geometry.decimate_triangles`
    (needs the layout file; holes stay open). Names that already exist get Blender's numeric
    suffix on the *new* datablocks; nothing existing is touched. Raises ValueError for a
    malformed result (nothing is left behind)."""
    scene = scene or bpy.context.scene
    parent = collection or scene.collection
    photo = None if photo_path is None else str(photo_path)
    vertices_m, landmarks_m = blender_frame(result, frontal=frontal,
                                            photo_metres_per_px=photo_metres_per_px)
    offset = np.asarray(offset_m, dtype=np.float32).reshape(3)
    vertices_m, landmarks_m = vertices_m + offset, landmarks_m + offset
    triangles = np.asarray(result.triangles, dtype=np.int64)
    uvs = np.asarray(result.uvs, dtype=np.float32)
    if stride != 1:
        from ..core.geometry import decimate_triangles
        from ..core.layout import load_layout

        layout = load_layout()
        if layout.layout_id != result.layout_id or layout.vertex_count != len(vertices_m):
            raise ValueError(
                f"Cannot decimate: the face was made for layout '{result.layout_id}', the "
                f"installed layout is '{layout.layout_id}'. Use the full mesh resolution.")
        keep, triangles = decimate_triangles(layout, stride)
        vertices_m, uvs = vertices_m[keep], uvs[keep]
    if triangles.size == 0 or triangles.min() < 0 or triangles.max() >= len(vertices_m):
        raise ValueError(f"The face '{name}' has invalid triangles for {len(vertices_m)} vertices.")
    if not np.isfinite(vertices_m).all():
        raise ValueError(f"The face '{name}' has non-finite vertices; it cannot be built.")
    origin = bounding_box_centre(vertices_m)
    local_vertices = (vertices_m - origin).astype(np.float32)

    with _rollback_on_error() as created, ThreadPoolExecutor(1) as pool:
        texture_png = pool.submit(png_bytes, result.texture)  # overlaps the mesh filling
        mesh = _build_mesh(name, local_vertices, triangles, uvs, created)
        mesh.materials.append(_build_material(name, result, created, texture_png.result()))
        obj = created.add(bpy.data.objects.new(name, mesh))
        obj.location = tuple(float(v) for v in origin)
        _store_properties(obj, result, photo, frontal)

        face_collection = created.add(bpy.data.collections.new(name))
        face_collection.objects.link(obj)
        if landmarks:
            lm_collection = created.add(bpy.data.collections.new(f"{name} landmarks"))
            local_landmarks = (landmarks_m - origin).astype(np.float64)
            for index in range(68):
                empty = created.add(bpy.data.objects.new(landmark_object_name(obj.name, index),
                                                         None))
                empty.empty_display_type = "SPHERE"
                empty.empty_display_size = EMPTY_SIZE_M
                empty.parent = obj
                empty.location = tuple(local_landmarks[index])
                empty["prn_landmark_index"] = index
                lm_collection.objects.link(empty)
            face_collection.children.link(lm_collection)
        if camera:
            nearest_y = float(vertices_m[:, 1].min())
            camera_obj = _build_camera(f"{name} camera", result, nearest_y, photo, created,
                                       photo_metres_per_px or result.metres_per_px, offset)
            face_collection.objects.link(camera_obj)
        parent.children.link(face_collection)  # the only change to existing data
    return obj


def set_scene_camera(scene: bpy.types.Scene, camera: bpy.types.Object) -> None:
    """Make `camera` the scene camera and give the render the photo's aspect ratio (stored on
    the camera by `build_face_object`), so the background photo fills the frame exactly."""
    scene.camera = camera
    width = int(camera.get("prn_photo_width_px", 0))
    height = int(camera.get("prn_photo_height_px", 0))
    if width > 0 and height > 0:
        scene.render.resolution_x = width
        scene.render.resolution_y = height
        scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0


def face_camera(obj: bpy.types.Object) -> bpy.types.Object | None:
    """The camera `build_face_object` made for this face object, if any."""
    for collection in obj.users_collection:
        for other in collection.objects:
            if other.type == "CAMERA":
                return other
    return None


def photo_stem(photo_path: str | os.PathLike[str]) -> str:
    """Object name for a photo: its file name without extension (fitted to Blender's limit,
    leaving room for the landmark suffixes)."""
    return _fit_name(Path(photo_path).stem or "face", 40)


def remove_face_object(obj: bpy.types.Object) -> None:
    """Delete a face built by `build_face_object` with everything it created: its collection
    (and landmark child collection), empties, camera (+ background photo), mesh, material and
    images. Datablocks still used elsewhere are left alone."""
    collections = [c for c in obj.users_collection if c.name in bpy.data.collections]
    objects = {obj, *obj.children}
    for collection in list(collections):
        collections.extend(collection.children)
    for collection in collections:
        objects.update(collection.objects)
    ids: list[bpy.types.ID] = []
    for o in objects:
        # Owners before what they use, so each one's user count is 0 when it is reached.
        if o.type == "MESH" and o.data is not None:
            ids.append(o.data)
            for material in o.data.materials:
                if material is not None:
                    ids.append(material)
                    if material.node_tree is not None:
                        ids += [n.image for n in material.node_tree.nodes
                                if n.type == "TEX_IMAGE" and n.image is not None]
        elif o.type == "CAMERA" and o.data is not None:
            ids.append(o.data)
            ids += [b.image for b in o.data.background_images if b.image is not None]
    for o in objects:
        bpy.data.objects.remove(o)
    for collection in reversed(collections):
        bpy.data.collections.remove(collection)
    kinds = ((bpy.types.Mesh, bpy.data.meshes), (bpy.types.Material, bpy.data.materials),
             (bpy.types.Image, bpy.data.images), (bpy.types.Camera, bpy.data.cameras))
    for datablock in ids:
        try:
            if datablock.users > 0:
                continue
        except ReferenceError:  # removed already (listed twice)
            continue
        for cls, data in kinds:
            if isinstance(datablock, cls):
                data.remove(datablock)
                break
