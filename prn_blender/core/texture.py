"""UV texture from the photo, its visibility, and the way back (numpy + OpenCV).

Texture pixel (col j, row i) of a size-S texture has its centre at u = (j + 0.5) / S,
v = 1 - (i + 0.5) / S (row 0 = the top, v = 1), i.e. at continuous texel coordinates
x = (j + 0.5) R / S - 0.5, y = (i + 0.5) R / S - 0.5 of the R x R position map. That is
exactly `cv2.resize`'s pixel-centre rule, so upsampling the position map with `cv2.resize`
(bilinear) gives each texture pixel its photo position.

Position maps are (R, R, 3) float32 in photo pixels (x right, y down, z towards the camera).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from .geometry import mesh_uvs, position_map_to_vertices
from .layout import UVLayout
from .render import rasterize

VISIBILITY_TOLERANCE = 0.02
"""Depth slack of the visibility test, as a fraction of the face's width in photo pixels."""


def fill_outside_mask(position_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Copy of `position_map` where every texel outside `mask` (or non-finite) takes the
    value of its nearest valid texel (Euclidean): bilinear reads near the face border then
    never mix in garbage or NaN. (R, R, C) in and out, float32."""
    pm = np.asarray(position_map, dtype=np.float32)
    valid = np.asarray(mask, dtype=bool) & np.isfinite(pm).all(axis=-1)
    if not valid.any():
        raise ValueError("the position map has no finite texel inside the mask")
    if valid.all():
        return pm.copy()
    # Labels of the nearest zero pixel of `src` (= valid texels), one label per valid texel.
    src = np.where(valid, 0, 255).astype(np.uint8)
    _, labels = cv2.distanceTransformWithLabels(
        src, cv2.DIST_L2, cv2.DIST_MASK_PRECISE, labelType=cv2.DIST_LABEL_PIXEL
    )
    valid_flat = np.flatnonzero(valid.reshape(-1))
    label_to_flat = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    label_to_flat[labels.reshape(-1)[valid_flat]] = valid_flat
    flat = pm.reshape(-1, pm.shape[-1])
    return flat[label_to_flat[labels.reshape(-1)]].reshape(pm.shape)


def upsample_position_map(
    position_map: np.ndarray, layout: UVLayout, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Position map resampled at the centres of a size x size texture (bilinear; see module
    docstring). Returns ((S, S, 3) float32 photo px, (S, S) bool: inside the mesh region,
    i.e. bilinear weight of `layout.mesh_mask` above one half)."""
    filled = fill_outside_mask(position_map, layout.mesh_mask)
    up = cv2.resize(filled, (size, size), interpolation=cv2.INTER_LINEAR)
    return up, texture_inside_mesh(layout, size)


def sample_texture(
    photo: np.ndarray, position_map: np.ndarray, layout: UVLayout, size: int = 1024,
    upsampled: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """(S, S, C) uint8 UV texture: the photo read (bilinear, `cv2.remap`) at each texture
    pixel's photo position. Outside the face the position map is extended from its nearest
    face texel, so the texture there repeats the face's edge colour (no dark seams when
    the texture is filtered or mip-mapped). photo: (H, W, C) uint8 RGB. upsampled: the
    `upsample_position_map(position_map, layout, size)` result, if the caller has it."""
    up, _ = upsampled or upsample_position_map(position_map, layout, size)
    return cv2.remap(
        np.asarray(photo), up[:, :, 0], up[:, :, 1], cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def visibility_mask(
    position_map: np.ndarray, layout: UVLayout, photo_shape: tuple[int, ...], size: int = 1024,
    tolerance: float = VISIBILITY_TOLERANCE,
    upsampled: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """(S, S) uint8 texture mask, 255 where the camera sees that point of the face: inside
    the mesh region, inside the photo, and not hidden by another part of the face: its depth
    is within `tolerance` x face width of the z-buffer of the face mesh (the farthest of the
    3 x 3 pixels around its photo position, which keeps grazing surfaces from aliasing).

    photo_shape: (H, W[, C]) of the photo the position map is in. upsampled: as for
    `sample_texture`."""
    h, w = int(photo_shape[0]), int(photo_shape[1])
    vertices = position_map_to_vertices(np.nan_to_num(position_map), layout)
    up, inside = upsampled or upsample_position_map(position_map, layout, size)
    col = np.round(up[:, :, 0]).astype(np.int64)
    row = np.round(up[:, :, 1]).astype(np.int64)
    in_photo = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    # Z-buffer only the face's box (+2 px, so the 3x3 erosion below sees the empty border
    # the whole photo has there): the same values, without a whole-photo raster (about 30
    # bytes per photo pixel: 4 GB for a 150 MP photo).
    x0 = int(np.clip(np.floor(vertices[:, 0].min()) - 2, 0, w - 1))
    y0 = int(np.clip(np.floor(vertices[:, 1].min()) - 2, 0, h - 1))
    x1 = int(np.clip(np.ceil(vertices[:, 0].max()) + 3, x0 + 1, w))
    y1 = int(np.clip(np.ceil(vertices[:, 1].max()) + 3, y0 + 1, h))
    shifted = vertices - np.array([x0, y0, 0.0], dtype=vertices.dtype)
    raster = rasterize(shifted, layout.triangles, (y1 - y0, x1 - x0))
    # The nearest-pixel z-buffer is aliased where the surface is seen at a grazing angle:
    # compare with the farthest depth of the 3x3 neighbourhood instead.
    depth = np.where(raster.mask, raster.depth, np.float32(-1e30)).astype(np.float32)
    depth = cv2.erode(depth, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    in_box = (col >= x0) & (col < x1) & (row >= y0) & (row < y1)
    zbuffer = np.where(in_box, depth[np.clip(row - y0, 0, y1 - y0 - 1),
                                     np.clip(col - x0, 0, x1 - x0 - 1)], np.float32(-1e30))
    face_width = float(np.ptp(vertices[:, 0]))
    seen = up[:, :, 2] >= zbuffer - tolerance * face_width
    visible = inside & in_photo & seen
    return np.where(visible, 255, 0).astype(np.uint8)


MIRROR_FILL_FEATHER = 1 / 64
"""Width of the blend at the edge of the seen region, as a fraction of the texture side
(16 px of a 1024 texture)."""
GRAZING_COS = (0.2, 0.5)
"""A seen surface point's photo colour is trusted fully when the cosine between its normal
and the view direction is above the second value, not at all below the first: at grazing
angles the predicted silhouette spills onto hair and background."""


def facing_cosine(position_map: np.ndarray, layout: UVLayout, size: int) -> np.ndarray:
    """(S, S) float32 cosine between the surface normal and the direction to the camera
    (orthographic, +z), at the texture pixels of a size-S texture (bilinear from the R x R
    texels: 0 on texels outside the mesh and on surfaces facing away, so pixels within a
    texel of the mesh border blend towards 0). position_map: (R, R, 3) photo px, z towards
    the camera."""
    pm = fill_outside_mask(position_map, layout.mesh_mask).astype(np.float64)
    along_col = np.gradient(pm, axis=1)
    along_row = np.gradient(pm, axis=0)
    normal = np.cross(along_col, along_row)  # x right, y down, z to camera: +z faces it
    cosine = normal[:, :, 2] / np.maximum(np.linalg.norm(normal, axis=-1), 1e-12)
    cosine = np.where(layout.mesh_mask, np.clip(cosine, 0.0, 1.0), 0.0).astype(np.float32)
    return cv2.resize(cosine, (size, size), interpolation=cv2.INTER_LINEAR)


def mirror_fill(texture: np.ndarray, visible: np.ndarray, position_map: np.ndarray,
                layout: UVLayout, feather: float = MIRROR_FILL_FEATHER
                ) -> tuple[np.ndarray, np.ndarray]:
    """Texture the parts of the face the photo does not show well from their mirror images.
    Needs `layout.is_mirror_symmetric` (texture column j and S-1-j are mirror points).

    Each texture pixel's photo colour gets a confidence: 0 where `visible` (the
    `visibility_mask`) says the camera does not see it, rising from 0 to 1 with the facing
    cosine over GRAZING_COS, and fading in over `feather` x S pixels from the edge of the seen
    region. The result is the confidence-weighted mean of the pixel's colour and its mirror
    pixel's, where the pixel's own weight is its confidence c and the mirror's is
    c_mirror (1 - c): fully trusted pixels keep their colour, unseen ones take the mirror's,
    pixels neither side shows keep the smeared photo.

    texture: (S, S, C) uint8; visible: (S, S) uint8; position_map: (R, R, 3) photo px.
    Returns ((S, S, C) uint8 texture, (S, S) uint8 mask: 255 inside the mesh where the colour
    comes from the photo, seen or mirrored)."""
    if not layout.is_mirror_symmetric:
        raise ValueError(f"layout '{layout.layout_id}' is not mirror-symmetric")
    size = texture.shape[0]
    inside = texture_inside_mesh(layout, size)
    seen = (np.asarray(visible) > 0) & inside
    # The mesh border is not an edge to fade across, only the edge of the seen region.
    distance = cv2.distanceTransform((seen | ~inside).astype(np.uint8), cv2.DIST_L2, 3)
    lo, hi = GRAZING_COS
    facing = np.clip((facing_cosine(position_map, layout, size) - lo) / (hi - lo), 0.0, 1.0)
    own = np.where(seen, facing * np.clip(distance / max(feather * size, 1.0), 0.0, 1.0), 0.0)
    mirror = own[:, ::-1] * (1.0 - own)
    total = own + mirror
    blend = inside & (mirror > 0)
    # Only the blended pixels in float: a texture may be 8192 px on a side.
    share = (mirror[blend] / total[blend]).astype(np.float32)[:, None]
    out = texture.copy()
    out[blend] = np.clip(texture[blend] * (1.0 - share) + texture[:, ::-1][blend] * share + 0.5,
                         0, 255).astype(np.uint8)
    photo_colour = inside & (seen | blend)
    return out, np.where(photo_colour, 255, 0).astype(np.uint8)


@lru_cache(maxsize=8)
def texture_inside_mesh(layout: UVLayout, size: int) -> np.ndarray:
    """(S, S) bool, read-only: texture pixels inside the mesh region (bilinear weight of
    `layout.mesh_mask` above one half, as `upsample_position_map` decides). Cached per layout
    object and size: every face of every photo needs the same one."""
    inside = cv2.resize(layout.mesh_mask.astype(np.float32), (size, size),
                        interpolation=cv2.INTER_LINEAR) > 0.5
    inside.setflags(write=False)
    return inside


def reproject_texture(
    texture: np.ndarray, position_map: np.ndarray, layout: UVLayout,
    photo_shape: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a UV texture back into photo space through the face mesh of `position_map`
    (z-buffered; the inverse of `sample_texture` on visible pixels).

    Returns ((H, W, C) uint8 image, black where no face; (H, W) bool face coverage)."""
    h, w = int(photo_shape[0]), int(photo_shape[1])
    tex = np.asarray(texture)
    size_y, size_x = tex.shape[:2]
    vertices = position_map_to_vertices(np.nan_to_num(position_map), layout)
    raster = rasterize(vertices, layout.triangles, (h, w))
    mask = raster.mask
    corners = np.asarray(layout.triangles, dtype=np.int64)[raster.triangle[mask]]
    uv = (mesh_uvs(layout).astype(np.float64)[corners]
          * raster.barycentric[mask][:, :, None]).sum(axis=1)
    map_x = np.full((h, w), -1.0, dtype=np.float32)
    map_y = np.full((h, w), -1.0, dtype=np.float32)
    map_x[mask] = uv[:, 0] * size_x - 0.5
    map_y[mask] = (1.0 - uv[:, 1]) * size_y - 0.5
    image = cv2.remap(tex, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    image[~mask] = 0
    return image, mask
