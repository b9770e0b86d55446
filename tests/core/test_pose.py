"""Head pose: Umeyama similarity against the canonical face, Euler convention, frontalize."""

from __future__ import annotations

import numpy as np
import pytest

from prn_blender.core.geometry import landmarks_from_position_map, position_map_to_vertices
from prn_blender.core.pose import (
    angles_from_rotation,
    estimate_pose,
    frontalize,
    rotation_from_angles,
    umeyama_similarity,
)
from tests.core.conftest import pose_ict_neutral

POSES_DEG = [(0, 0, 0), (30, 0, 0), (-45, 10, 0), (0, -25, 15), (20, 15, -30), (70, -5, 10)]


@pytest.mark.parametrize(("yaw", "pitch", "roll"), POSES_DEG)
def test_estimate_pose_recovers_a_known_head_rotation(ict_layout, yaw, pitch, roll):
    face = pose_ict_neutral(ict_layout, yaw, pitch, roll, scale_px_per_cm=9.0,
                            translation_px=(400.0, 300.0, 150.0))
    vertices = position_map_to_vertices(face.position_map, ict_layout)
    pose = estimate_pose(vertices, ict_layout)
    assert pose.yaw_deg == pytest.approx(yaw, abs=0.5)
    assert pose.pitch_deg == pytest.approx(pitch, abs=0.5)
    assert pose.roll_deg == pytest.approx(roll, abs=0.5)
    assert pose.scale == pytest.approx(9.0, rel=0.005)
    np.testing.assert_allclose(pose.translation, face.translation_px, atol=0.5)  # px
    assert np.linalg.det(pose.rotation) == pytest.approx(1.0, abs=1e-9)


def test_estimate_pose_on_the_synthetic_layout(synthetic_layout):
    face = pose_ict_neutral(synthetic_layout, 25.0, -10.0, 5.0)
    pose = estimate_pose(position_map_to_vertices(face.position_map, synthetic_layout),
                         synthetic_layout)
    np.testing.assert_allclose([pose.yaw_deg, pose.pitch_deg, pose.roll_deg], [25, -10, 5],
                               atol=0.01)


def test_angle_signs_mean_what_head_pose_documents(ict_layout):
    """yaw > 0: nose to image right; pitch > 0: chin up (nose up); roll > 0: clockwise,
    so the eye on the image right moves down."""
    def landmarks(yaw=0.0, pitch=0.0, roll=0.0):
        face = pose_ict_neutral(ict_layout, yaw, pitch, roll)
        return landmarks_from_position_map(face.position_map, ict_layout)

    frontal = landmarks()
    nose, right_eye = 30, 45  # landmark 45 = outer corner of the eye on the image right
    assert landmarks(yaw=20)[nose, 0] > frontal[nose, 0] + 10
    assert landmarks(pitch=20)[nose, 1] < frontal[nose, 1] - 10
    assert landmarks(roll=20)[right_eye, 1] > frontal[right_eye, 1] + 10


@pytest.mark.parametrize("angles", [(10, 20, 30), (-80, 45, -120), (0, 179, 0), (89.9, 5, 7)])
def test_angles_round_trip_through_rotation(angles):
    rotation = rotation_from_angles(*angles)
    np.testing.assert_allclose(angles_from_rotation(rotation), angles, atol=1e-6)


def test_gimbal_lock_still_gives_the_same_rotation():
    rotation = rotation_from_angles(90.0, 30.0, 10.0)
    yaw, pitch, roll = angles_from_rotation(rotation)
    assert yaw == pytest.approx(90.0)
    np.testing.assert_allclose(rotation_from_angles(yaw, pitch, roll), rotation, atol=1e-9)


def test_umeyama_never_returns_a_reflection():
    rng = np.random.default_rng(1)
    source = rng.normal(size=(50, 3))
    mirrored = source * np.array([-1.0, 1.0, 1.0])  # best fit would be a reflection
    _, rotation, _ = umeyama_similarity(source, mirrored)
    assert np.linalg.det(rotation) == pytest.approx(1.0)


def test_umeyama_recovers_a_similarity_and_weights_ignore_outliers():
    rng = np.random.default_rng(1)
    source = rng.normal(size=(50, 3))
    rotation = rotation_from_angles(30.0, -10.0, 5.0)
    target = 2.5 * source @ rotation.T + [1.0, -2.0, 3.0]
    scale, r, t = umeyama_similarity(source, target)
    assert scale == pytest.approx(2.5, abs=1e-9)
    np.testing.assert_allclose(r, rotation, atol=1e-9)
    np.testing.assert_allclose(t, [1.0, -2.0, 3.0], atol=1e-9)
    corrupted = target.copy()
    corrupted[:5] += 40.0  # five gross outliers: weight 0 removes them exactly
    weights = np.r_[np.zeros(5), rng.uniform(0.5, 2.0, 45)]
    scale, r, t = umeyama_similarity(source, corrupted, weights)
    assert scale == pytest.approx(2.5, abs=1e-9)
    np.testing.assert_allclose(r, rotation, atol=1e-9)
    assert umeyama_similarity(source, corrupted)[0] != pytest.approx(2.5, abs=1e-3)
    with pytest.raises(ValueError, match="got 2"):  # zero weights do not count towards the 3
        umeyama_similarity(source[:5], target[:5], np.r_[0.0, 0.0, 0.0, 1.0, 1.0])


def test_umeyama_works_in_the_image_plane_without_reflection():
    rng = np.random.default_rng(2)
    source = rng.normal(size=(20, 2))
    a = np.deg2rad(-7.0)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    scale, r, t = umeyama_similarity(source, 1.1 * source @ rotation.T + [3.0, -1.0])
    assert scale == pytest.approx(1.1, abs=1e-9) and r.shape == (2, 2)
    np.testing.assert_allclose(r, rotation, atol=1e-9)
    np.testing.assert_allclose(t, [3.0, -1.0], atol=1e-9)
    _, r, _ = umeyama_similarity(source, source * [-1.0, 1.0])
    assert np.linalg.det(r) == pytest.approx(1.0)


def test_estimate_pose_ignores_nan_vertices(synthetic_layout):
    face = pose_ict_neutral(synthetic_layout, -15.0, 5.0, 0.0)
    vertices = position_map_to_vertices(face.position_map, synthetic_layout)
    vertices[::7] = np.nan
    pose = estimate_pose(vertices, synthetic_layout)
    assert pose.yaw_deg == pytest.approx(-15.0, abs=0.01)


def test_frontalize_turns_the_face_back_to_the_canonical_orientation(ict_layout):
    face = pose_ict_neutral(ict_layout, 35.0, -20.0, 10.0, scale_px_per_cm=10.0)
    vertices = position_map_to_vertices(face.position_map, ict_layout)
    before = vertices.copy()
    pose = estimate_pose(vertices, ict_layout)
    front = frontalize(vertices, pose)
    expected = 10.0 * ict_layout.canonical_vertices + face.translation_px
    np.testing.assert_allclose(front, expected, atol=0.05)  # px
    np.testing.assert_array_equal(vertices, before)
    frontal_pose = estimate_pose(front, ict_layout)
    np.testing.assert_allclose(frontal_pose.rotation, np.eye(3), atol=1e-4)


def test_estimate_pose_tolerates_per_vertex_noise(ict_layout):
    """1 px Gaussian noise per coordinate on a face about 200 px wide: still within 0.5 deg."""
    face = pose_ict_neutral(ict_layout, -30.0, 12.0, -8.0)
    vertices = position_map_to_vertices(face.position_map, ict_layout)
    noisy = vertices + np.random.default_rng(2).normal(0.0, 1.0, vertices.shape)
    pose = estimate_pose(noisy, ict_layout)
    np.testing.assert_allclose([pose.yaw_deg, pose.pitch_deg, pose.roll_deg], [-30, 12, -8],
                               atol=0.5)
