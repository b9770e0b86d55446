"""UV texture sampling, visibility and reprojection."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from prn_blender.core.texture import (
    facing_cosine,
    fill_outside_mask,
    mirror_fill,
    reproject_texture,
    sample_texture,
    upsample_position_map,
    visibility_mask,
)
from tests.core.conftest import pose_ict_neutral

PHOTO_SHAPE = (480, 640, 3)


def _smooth_photo() -> np.ndarray:
    """A smooth synthetic RGB photo (periods of 140-260 px)."""
    rows, cols = np.mgrid[0:PHOTO_SHAPE[0], 0:PHOTO_SHAPE[1]].astype(np.float64)
    channels = [128 + 60 * np.sin(cols / 23.0), 128 + 50 * np.cos(rows / 31.0),
                128 + 40 * np.sin((cols + rows) / 41.0)]
    return np.stack(channels, -1).round().astype(np.uint8)


def test_fill_outside_mask_copies_the_nearest_valid_texel():
    grid = np.zeros((5, 5, 1), np.float32)
    grid[1:4, 1:4, 0] = np.arange(9).reshape(3, 3)
    grid[0, 0] = np.nan
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    filled = fill_outside_mask(grid, mask)
    assert filled[0, 2, 0] == grid[1, 2, 0]  # straight above the top row
    assert filled[4, 4, 0] == grid[3, 3, 0]  # diagonal corner
    assert filled[2, 0, 0] == grid[2, 1, 0]
    np.testing.assert_array_equal(filled[mask], grid[mask])
    assert np.isnan(grid[0, 0, 0])  # input untouched


def test_texture_pixels_read_the_photo_at_their_upsampled_position(synthetic_layout):
    """Linear position map on the 64 layout: texture pixel (i, j) of a 128 texture sits at
    texel x = (j + 0.5) / 2 - 0.5, i.e. photo x = 2 x + 50; the photo's red = its x."""
    r = synthetic_layout.resolution
    rows, cols = np.mgrid[0:r, 0:r].astype(np.float32)
    pm = np.stack([2 * cols + 50, 1.5 * rows + 40, np.zeros_like(cols)], -1)
    photo_rows, photo_cols = np.mgrid[0:256, 0:256]
    photo = np.stack([photo_cols, photo_rows, np.zeros_like(photo_cols)], -1).astype(np.uint8)
    texture = sample_texture(photo, pm, synthetic_layout, size=128)
    assert texture.shape == (128, 128, 3) and texture.dtype == np.uint8
    _, inside = upsample_position_map(pm, synthetic_layout, 128)
    tex_rows, tex_cols = np.mgrid[0:128, 0:128].astype(np.float64)
    texel_x, texel_y = (tex_cols + 0.5) / 2 - 0.5, (tex_rows + 0.5) / 2 - 0.5
    np.testing.assert_allclose(texture[..., 0][inside], (2 * texel_x + 50)[inside], atol=1.0)
    np.testing.assert_allclose(texture[..., 1][inside], (1.5 * texel_y + 40)[inside], atol=1.0)


@pytest.mark.parametrize("yaw_deg", [0.0, 35.0])
def test_texture_round_trip_reproduces_the_photo_on_visible_face_pixels(ict_layout, yaw_deg):
    """photo -> UV texture -> painted back through the mesh: mean abs error < 0.5 grey levels
    and 99 % of values within 2, on face pixels 2 px or more inside the silhouette."""
    photo = _smooth_photo()
    face = pose_ict_neutral(ict_layout, yaw_deg, 5.0, 0.0, scale_px_per_cm=12.0)
    texture = sample_texture(photo, face.position_map, ict_layout, size=1024)
    image, covered = reproject_texture(texture, face.position_map, ict_layout, photo.shape)
    inner = cv2.erode(covered.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert inner.sum() > 20_000  # the face is about 200 x 250 px
    error = np.abs(image.astype(np.int16) - photo.astype(np.int16))[inner]
    assert error.mean() < 0.5
    assert np.percentile(error, 99) <= 2
    assert (image[~covered] == 0).all()


def test_frontal_face_is_almost_all_visible_and_a_turned_face_hides_its_far_side(ict_layout):
    """UV columns left of the middle are the face's image-left half when frontal. Turned 60
    degrees to image right, that half stays visible and the other half mostly is not."""
    size = 512
    fractions = {}
    for yaw in (0.0, 60.0):
        face = pose_ict_neutral(ict_layout, yaw, 0.0, 0.0)
        visible = visibility_mask(face.position_map, ict_layout, PHOTO_SHAPE, size) > 0
        _, inside = upsample_position_map(face.position_map, ict_layout, size)
        half = size // 2
        fractions[yaw] = (visible[:, :half].sum() / inside[:, :half].sum(),
                          visible[:, half:].sum() / inside[:, half:].sum())
        assert not (visible & ~inside).any()
    assert min(fractions[0.0]) > 0.9  # ears, nostrils, inner mouth and under the chin: hidden
    assert fractions[60.0][0] > 0.95
    assert fractions[60.0][1] < 0.4


def test_texels_outside_the_photo_are_not_visible(ict_layout):
    face = pose_ict_neutral(ict_layout, translation_px=(0.0, 240.0, 200.0))  # centred on x=0
    visible = visibility_mask(face.position_map, ict_layout, PHOTO_SHAPE, 256) > 0
    up, _ = upsample_position_map(face.position_map, ict_layout, 256)
    assert visible.any()
    assert not visible[up[:, :, 0] < -0.5].any()


@pytest.mark.parametrize("yaw", [0.0, 50.0])
def test_visibility_is_the_same_in_a_large_photo_as_in_a_small_one(ict_layout, yaw):
    """The z-buffer covers only the face's box: a face moved into a far corner of a 6000 x
    4000 px photo is seen exactly as in the 640 x 480 one (same mask, texel for texel), and
    a face cut by the photo's edge keeps its box clipped to the photo."""
    near = pose_ict_neutral(ict_layout, yaw, 10.0, 5.0)
    shift = np.array([5200.0, 3400.0, 0.0], np.float32)
    far_map = near.position_map + shift
    small = visibility_mask(near.position_map, ict_layout, PHOTO_SHAPE, 256)
    large = visibility_mask(far_map, ict_layout, (4000, 6000, 3), 256)
    assert small.any()
    np.testing.assert_array_equal(small, large)
    cut = visibility_mask(near.position_map - np.array([320.0, 0, 0], np.float32), ict_layout,
                          PHOTO_SHAPE, 256)
    up, _ = upsample_position_map(near.position_map, ict_layout, 256)
    right_half = up[:, :, 0] >= 320.5  # still inside the photo after the shift
    np.testing.assert_array_equal(cut[right_half], small[right_half])
    assert not cut[up[:, :, 0] < 319.5].any()


def test_mirror_fill_recovers_the_far_side_of_a_turned_face(ict_layout):
    """A left-right symmetric UV texture painted onto the ICT neutral turned 60 degrees: the
    texture read back from that photo is smeared on the hidden half; mirror filling recovers
    the painted texture there (its mirror half was seen), and leaves the seen half alone."""
    size = 512
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    from_middle = np.abs(cols + 0.5 - size / 2)  # symmetric: column j and size-1-j agree
    painted = np.stack([128 + 80 * np.sin(from_middle / 19.0), 128 + 70 * np.cos(rows / 27.0),
                        128 + 60 * np.sin((from_middle + rows) / 33.0)], -1).round()
    painted = painted.astype(np.uint8)
    np.testing.assert_array_equal(painted, painted[:, ::-1])
    face = pose_ict_neutral(ict_layout, 60.0, 0.0, 0.0, scale_px_per_cm=14.0)
    photo, covered = reproject_texture(painted, face.position_map, ict_layout, PHOTO_SHAPE)
    photo[~covered] = 90
    texture = sample_texture(photo, face.position_map, ict_layout, size)
    visible = visibility_mask(face.position_map, ict_layout, PHOTO_SHAPE, size)
    filled, coloured = mirror_fill(texture, visible, face.position_map, ict_layout)
    _, inside = upsample_position_map(face.position_map, ict_layout, size)
    seen = visible > 0
    margin = np.ones((9, 9), np.uint8)  # away from the blend zone and silhouettes
    hidden = inside & (cv2.erode((~seen & inside).astype(np.uint8), margin) > 0) \
        & (cv2.erode(seen[:, ::-1].astype(np.uint8), margin) > 0)
    deep_seen = cv2.erode(seen.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0
    assert hidden.sum() > 0.15 * inside.sum() and deep_seen.sum() > 0.15 * inside.sum()

    def error(tex: np.ndarray, where: np.ndarray) -> float:
        return float(np.abs(tex.astype(np.int16) - painted.astype(np.int16))[where].mean())

    assert error(texture, hidden) > 20  # smeared
    assert error(filled, hidden) < 3
    trusted = deep_seen & (facing_cosine(face.position_map, ict_layout, size) >= 0.5)
    assert trusted.sum() > 0.1 * inside.sum()
    np.testing.assert_array_equal(filled[trusted], texture[trusted])
    # The mask marks where the colour is the photo's (seen or mirrored); elsewhere inside
    # the mesh the texture is the smeared photo, unchanged (mirror seen edge-on, or hidden).
    assert (coloured[hidden] == 255).mean() > 0.95 and (coloured[~inside] == 0).all()
    unmarked = inside & (coloured == 0)
    assert unmarked.any()
    np.testing.assert_array_equal(filled[unmarked], texture[unmarked])


def test_facing_cosine_of_the_forehead_follows_the_turn(ict_layout):
    """The forehead's middle (texel row 52, 22 rows above the nose bridge landmark) faces the
    camera on the frontal neutral; turned by yaw, its cosine drops as cos(yaw). Turned 80
    degrees, the far half of the face faces away (cosine 0) and the near half is seen."""
    size, row = 256, 52
    cosines = {}
    for yaw in (0.0, 40.0, 70.0):
        face = pose_ict_neutral(ict_layout, yaw, 0.0, 0.0)
        cosines[yaw] = facing_cosine(face.position_map, ict_layout, size)[row, 127:129].mean()
    assert cosines[0.0] > 0.999
    assert cosines[40.0] == pytest.approx(np.cos(np.radians(40.0)), abs=0.01)
    assert cosines[70.0] == pytest.approx(np.cos(np.radians(70.0)), abs=0.01)
    turned = facing_cosine(pose_ict_neutral(ict_layout, 80.0, 0.0, 0.0).position_map,
                           ict_layout, size)
    mesh = ict_layout.mesh_mask
    assert (turned >= 0).all() and (turned[~mesh] == 0).all()
    assert turned[:, 128:][mesh[:, 128:]].mean() < 0.02
    assert turned[:, :128][mesh[:, :128]].mean() > 0.6
