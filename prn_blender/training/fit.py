"""Fit the ICT-FaceKit model to teacher landmarks and hand labels (DESIGN.md section 2, step 5).

Per photo: scaled-orthographic pose + ICT identity (100 modes, N(0, 1) prior) + expression
(53 blendshapes, bounded to [0, 1]), by regularised least squares, alternating

1. pose: weighted Umeyama similarity (no reflection) of the model's 3D points onto the 3D
   observations (teacher 68, dense teacher);
2. shape: with the pose fixed, positions are linear in (identity, expression, translation), so
   one bounded linear least-squares solve (`scipy.optimize.lsq_linear`) over every observation
   (3D teacher points, 2D hand labels) with a ridge prior.

Frames: the model lives in position-map axes (x right, y down, z towards the camera), cm;
observations are in the storage image's pixels (same axes). photo = scale * R @ model + t.
Residuals are divided by the current scale, so weights and the prior are in cm and do not
depend on the photo's size. numpy + scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.layout import UVLayout
from ..core.pose import umeyama_similarity

# ICT axes (+Y up, +Z towards the viewer) -> position-map axes (y down): flip Y.
ICT_TO_PM = np.array([1.0, -1.0, 1.0], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class SurfaceBasis:
    """The linear face model restricted to P surface points (barycentric combinations of ICT
    vertices), in position-map axes, cm: points = mean + identity^T a + expression^T b."""

    mean: np.ndarray  # (P, 3)
    identity: np.ndarray  # (100, P, 3)
    expression: np.ndarray  # (53, P, 3)

    @property
    def point_count(self) -> int:
        return int(self.mean.shape[0])

    def points(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """(P, 3) surface points for coefficients (100,), (53,)."""
        return (
            self.mean
            + np.tensordot(identity, self.identity, axes=1)
            + np.tensordot(expression, self.expression, axes=1)
        )

    def subset(self, rows: np.ndarray) -> SurfaceBasis:
        return SurfaceBasis(self.mean[rows], self.identity[:, rows], self.expression[:, rows])


def locate_texels_in_ict(layout: UVLayout, texels_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ICT triangle and barycentric weights of continuous texel positions (x = col, y = row).

    Returns (vertex_ids (P, 3) ICT vertex indices, barycentric (P, 3)). A point outside every
    triangle (it should not happen for points inside the face mask) takes the nearest one."""
    texels_xy = np.asarray(texels_xy, dtype=np.float64).reshape(-1, 2)
    corners = layout.ict_vertex_texels[layout.ict_triangles].astype(np.float64)  # (F, 3, 2)
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    v0, v1 = b - a, c - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    tri_out = np.empty(len(texels_xy), dtype=np.int64)
    bary_out = np.empty((len(texels_xy), 3), dtype=np.float64)
    for i, p in enumerate(texels_xy):  # P is small (tens to hundreds): loop over points only
        v2 = p - a
        l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        l0 = 1.0 - l1 - l2
        bary = np.stack([l0, l1, l2], axis=1)
        outside = -np.minimum(bary, 0.0).sum(axis=1)  # 0 inside
        best = int(np.argmin(outside))
        tri_out[i] = best
        clipped = np.clip(bary[best], 0.0, None)
        bary_out[i] = clipped / clipped.sum()
    vertex_ids = layout.ict_vertex_ids[layout.ict_triangles[tri_out]]
    return vertex_ids.astype(np.int64), bary_out


def surface_basis(
    neutral: np.ndarray,
    identity: np.ndarray,
    expression: np.ndarray,
    vertex_ids: np.ndarray,
    barycentric: np.ndarray,
) -> SurfaceBasis:
    """Gather the ICT model (ICT axes, cm) at barycentric surface points -> position-map axes."""
    w = barycentric[:, :, None].astype(np.float32)

    def gather(arr: np.ndarray) -> np.ndarray:
        return (arr[..., vertex_ids, :] * w).sum(axis=-2) * ICT_TO_PM

    return SurfaceBasis(
        mean=gather(neutral).astype(np.float64),
        identity=gather(identity).astype(np.float64),
        expression=gather(expression).astype(np.float64),
    )


@dataclass(frozen=True)
class FitSettings:
    """Weights of the observation groups and the priors (cm-based; see module docstring)."""

    identity_prior: float = 0.1
    """lambda of ||identity||^2 (modes are N(0, 1))."""
    expression_prior: float = 0.05
    """lambda of ||expression||^2 (blendshape weights in [0, 1])."""
    teacher_xy_weight: float = 1.0
    teacher_z_weight: float = 0.3
    """Teacher depth is less reliable than its x, y."""
    label_weight: float = 10.0
    """Hand labels weigh most (DESIGN section 2, step 3). Measured on 100 training faces (NME
    of the fitted calibrated 68 against the labels; 300W 51 points, AFLW balanced): weight 3
    gave 2.58 % / 4.11 %, 10 gave 2.53 % / 3.66 %, 30 gave 2.71 % / 3.39 % (300W's labels
    then drag the ICT face off its 3D shape); without labels 3.14 % / 5.08 %."""
    dense_xy_weight: float = 0.15
    dense_z_weight: float = 0.05
    iterations: int = 4


@dataclass(frozen=True, eq=False)
class Observations:
    """What one photo offers, in its storage-image pixels. Rows index into the fit basis.

    teacher: (68, 3) 3D landmarks of the teacher at basis rows `teacher_rows`.
    labels: optional (L, 2) hand labels at basis rows `label_rows` with per-point weights.
    dense: optional (D, 3) dense-teacher points at basis rows `dense_rows`."""

    teacher: np.ndarray
    teacher_rows: np.ndarray
    labels: np.ndarray | None = None
    label_rows: np.ndarray | None = None
    label_weights: np.ndarray | None = None
    dense: np.ndarray | None = None
    dense_rows: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class FitResult:
    identity: np.ndarray  # (100,)
    expression: np.ndarray  # (53,)
    scale: float  # photo px per cm
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)
    teacher_rms_px: float
    """RMS 3D distance between the fitted and the teacher's 68 (x, y, z), photo pixels."""
    label_rms_px: float
    """RMS 2D distance to the hand labels (NaN without labels), photo pixels."""

    def to_photo(self, points_cm: np.ndarray) -> np.ndarray:
        return (self.scale * points_cm @ self.rotation.T + self.translation).astype(np.float32)


def fit_face(basis: SurfaceBasis, obs: Observations, settings: FitSettings) -> FitResult:
    """Alternate pose (Umeyama) and shape (bounded linear least squares); see module doc."""
    n_id = basis.identity.shape[0]
    n_exp = basis.expression.shape[0]
    alpha = np.zeros(n_id)
    beta = np.zeros(n_exp)

    groups_3d: list[tuple[np.ndarray, np.ndarray, float, float]] = [
        (obs.teacher_rows, obs.teacher, settings.teacher_xy_weight, settings.teacher_z_weight)
    ]
    if obs.dense is not None and obs.dense_rows is not None:
        ok = np.isfinite(obs.dense).all(axis=1)
        if ok.any():
            weights = (settings.dense_xy_weight, settings.dense_z_weight)
            groups_3d.append((obs.dense_rows[ok], obs.dense[ok], *weights))
    has_labels = obs.labels is not None and obs.label_rows is not None
    if has_labels:
        lab_ok = np.isfinite(obs.labels).all(axis=1)
        lab_rows = obs.label_rows[lab_ok]
        lab_xy = obs.labels[lab_ok]
        lab_w = (
            np.ones(len(lab_rows)) if obs.label_weights is None else obs.label_weights[lab_ok]
        ) * settings.label_weight

    bounds_lo = np.concatenate([np.full(n_id, -np.inf), np.zeros(n_exp)])
    bounds_hi = np.concatenate([np.full(n_id, np.inf), np.ones(n_exp)])
    scale, rot, trans = 1.0, np.eye(3), np.zeros(3)
    for _ in range(settings.iterations):
        pts = basis.points(alpha, beta)
        # Pose from the 3D groups (z of each group is relative: centre it per group).
        src_list, dst_list, w_list = [], [], []
        for rows, target, wxy, _wz in groups_3d:
            src_list.append(pts[rows])
            dst_list.append(target)
            w_list.append(np.full(len(rows), wxy))
        src = np.concatenate(src_list)
        dst = np.concatenate(dst_list)
        scale, rot, trans = umeyama_similarity(src, dst, np.concatenate(w_list))

        # Shape: residual_cm = (s R (mean + A x) + t_g - obs) / s  for each observation.
        # Unknowns x = [alpha, beta]; translation re-solved per group in closed form by
        # centring each group's residuals (weighted means), which is exact for a free offset.
        blocks_a, blocks_b = [], []
        for rows, target, wxy, wz in groups_3d:
            a_blk, b_blk = _linear_block(
                basis, rows, rot, target / scale, trans / scale, (wxy, wxy, wz)
            )
            blocks_a.append(a_blk)
            blocks_b.append(b_blk)
        if has_labels and len(lab_rows):
            a_blk, b_blk = _linear_block(
                basis, lab_rows, rot[:2], lab_xy / scale, trans[:2] / scale, None, lab_w
            )
            blocks_a.append(a_blk)
            blocks_b.append(b_blk)
        a_mat = np.concatenate(blocks_a)
        b_vec = np.concatenate(blocks_b)
        prior = np.concatenate(
            [np.full(n_id, settings.identity_prior), np.full(n_exp, settings.expression_prior)]
        )
        x = bounded_ridge(a_mat.T @ a_mat + np.diag(prior), a_mat.T @ b_vec, bounds_lo, bounds_hi)
        alpha, beta = x[:n_id], x[n_id:]

    pts = basis.points(alpha, beta)
    scale, rot, trans = umeyama_similarity(
        pts[obs.teacher_rows], obs.teacher, np.full(len(obs.teacher_rows), 1.0)
    )
    fitted = scale * pts @ rot.T + trans
    t_err = fitted[obs.teacher_rows] - obs.teacher
    t_err[:, 2] -= t_err[:, 2].mean()
    teacher_rms = float(np.sqrt((t_err**2).sum(axis=1).mean()))
    label_rms = float("nan")
    if has_labels and len(lab_rows):
        label_rms = float(np.sqrt(((fitted[lab_rows, :2] - lab_xy) ** 2).sum(axis=1).mean()))
    return FitResult(alpha, beta, scale, rot, trans, teacher_rms, label_rms)


def bounded_ridge(
    normal: np.ndarray, rhs: np.ndarray, lo: np.ndarray, hi: np.ndarray, max_rounds: int = 8
) -> np.ndarray:
    """Minimise x^T N x - 2 rhs^T x subject to lo <= x <= hi (N positive definite).

    Active-set iterations: solve over the free variables, clamp the violators to their
    bound, release clamped ones whose gradient points inside. Exact at convergence; a few
    rounds suffice for blendshape bounds (most weights sit inside or at 0)."""
    n = len(rhs)
    x = np.clip(np.linalg.solve(normal, rhs), lo, hi)
    fixed = (x <= lo) | (x >= hi)
    for _ in range(max_rounds):
        free = ~fixed
        x_new = x.copy()
        if free.any():
            rhs_free = rhs[free] - normal[np.ix_(free, fixed)] @ x[fixed]
            x_new[free] = np.linalg.solve(normal[np.ix_(free, free)], rhs_free)
        violated = free & ((x_new < lo) | (x_new > hi))
        x_new = np.clip(x_new, lo, hi)
        grad = normal @ x_new - rhs  # d/dx of the objective / 2
        release = fixed & (((x_new <= lo) & (grad < 0)) | ((x_new >= hi) & (grad > 0)))
        x = x_new
        if not violated.any() and not release.any():
            break
        fixed = (fixed | violated) & ~release
    assert x.shape == (n,)
    return x


def _linear_block(
    basis: SurfaceBasis,
    rows: np.ndarray,
    rot: np.ndarray,
    target_cm: np.ndarray,
    trans_cm: np.ndarray,
    axis_weights: tuple[float, float, float] | None,
    point_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the weighted shape system for one observation group, with each axis's free
    offset eliminated by weighted centring (z is relative depth; x, y share the pose's t, but
    centring them too keeps the solve independent of small pose-translation errors)."""
    d = rot.shape[0]
    mean = basis.mean[rows] @ rot.T + trans_cm  # (n, d)
    modes = np.concatenate([basis.identity[:, rows], basis.expression[:, rows]])  # (M, n, 3)
    proj = modes @ rot.T  # (M, n, d)
    resid = target_cm - mean  # (n, d)
    pw = np.ones(len(rows)) if point_weights is None else np.asarray(point_weights, float)
    aw = np.ones(d) if axis_weights is None else np.asarray(axis_weights[:d], float)
    wn = pw / pw.sum()
    if d == 3:
        # Depth is relative (min z = 0 in the teacher's output): remove the z offset only.
        resid = resid.copy()
        resid[:, 2] -= wn @ resid[:, 2]
        proj = proj.copy()
        proj[:, :, 2] -= (proj[:, :, 2] * wn).sum(axis=1, keepdims=True)
    sw = np.sqrt(pw)[:, None] * np.sqrt(aw)[None, :]  # (n, d)
    a_blk = (proj * sw[None]).reshape(proj.shape[0], -1).T  # (n*d, M)
    b_blk = (resid * sw).reshape(-1)
    return a_blk, b_blk
