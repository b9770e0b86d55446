"""Generate our UV layout from ICT-FaceKit: `python -m prn_blender.training.make_layout`.

Writes model_weights/uv_layout_ict256.npz (see core.layout.UVLayout for every field) and a
picture of it, model_weights/uv_layout_ict256.png. Regenerating gives byte-identical files:
floats are rounded before writing, and nothing depends on BLAS summation order beyond that.

DESIGN.md sections 1 and 3:
* face = ICT polygons 0-9229 (UV tile 0), rasterised at texel centres
  u = (col + 0.5) / 256, v = 1 - (row + 0.5) / 256: 62,712 texels;
* mesh = texel grid, two triangles per 2x2 block of mesh texels, outward normals in the
  Blender frame; the neck more than 1 cm below the lowest jaw landmark is cut;
* calibrated 68 = PRNet's BFM-defined 68 (canonical_vertices.npy at uv_kpt_ind) aligned to
  the ICT neutral (Umeyama, no reflection) and projected to the closest point of the ICT face
  surface, iterated to convergence (ICP); inner-lip points 61-63 restricted to the upper lip
  and 65-67 to the lower lip (told apart by the jawOpen blendshape);
* weight mask 16 : 4 : 3 : 0 (landmark texels : eyes/nose/mouth : other face : neck).
numpy + OpenCV only; about 13 s.

Measured (v1): 62,712 face texels, 54,598 mesh vertices, 107,940 triangles, 8,114 neck
texels. ICP: 40 rounds, 12.59 -> 11.82 canonical units per ICT cm, residual 0.94 mm mean,
2.2 mm max (landmark 38). Against 3DDFA-V2 teacher landmarks of 200 training faces (ICT fit,
teacher 68 only), the converged texels reach a 2D NME floor of 0.69 % (6 ICP rounds: 0.77 %).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from ..core.frames import uv_to_texel
from ..core.layout import LAYOUT_FILENAME, UVLayout
from ..core.pose import umeyama_similarity
from .ict import DEFAULT_SHARED, REPO, ICTModel, load_ict

LAYOUT_ID = "ict-face-256-v1"
RESOLUTION = 256
NECK_MARGIN_CM = 1.0
REGION_DILATION_TEXELS = 4
WEIGHT_LANDMARK, WEIGHT_FEATURE, WEIGHT_FACE, WEIGHT_NECK = 16.0, 4.0, 3.0, 0.0
FEATURE_REGIONS = (range(36, 42), range(42, 48), range(27, 36), range(48, 60))
"""Eyes, nose and outer mouth: their calibrated landmarks' UV convex hulls."""
UPPER_INNER_LIP, LOWER_INNER_LIP = (61, 62, 63), (65, 66, 67)
UPPER_LIP_MIN_DROP_CM, LOWER_LIP_MAX_DROP_CM = -1.0, -1.5
"""jawOpen mean vertical displacement (cm) separating upper-lip from lower-lip triangles."""
ICP_MAX_ROUNDS, ICP_SCALE_TOLERANCE = 60, 1e-5


def rasterise_triangles(
    corners_xy: np.ndarray, resolution: int = RESOLUTION, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Texel-centre rasterisation of (F, 3, 2) triangles in continuous texel coordinates
    (x = col, y = row; texel centres at integers).

    Returns (triangle (R, R) int64, -1 where no triangle covers the texel centre; barycentric
    (R, R, 3) float64, 0 there). A centre on a shared edge (tolerance 1e-9) goes to the
    lowest-numbered triangle. Vectorised: each chunk of triangles tests every texel centre of
    its largest bounding box at once."""
    corners_xy = np.asarray(corners_xy, dtype=np.float64)
    lo = np.clip(np.floor(corners_xy.min(axis=1)).astype(np.int64), 0, resolution - 1)
    hi = np.clip(np.ceil(corners_xy.max(axis=1)).astype(np.int64), 0, resolution - 1)
    texel_parts, tri_parts, bary_parts = [], [], []
    for first in range(0, len(corners_xy), chunk):
        sl = slice(first, first + chunk)
        a, b, c = corners_xy[sl, 0], corners_xy[sl, 1], corners_xy[sl, 2]
        lo_c, size = lo[sl], hi[sl] - lo[sl] + 1  # (n, 2) bounding boxes, (x, y)
        dy, dx = np.mgrid[0 : size[:, 1].max(), 0 : size[:, 0].max()]
        dx, dy = dx.ravel()[None, :], dy.ravel()[None, :]
        px, py = lo_c[:, :1] + dx, lo_c[:, 1:] + dy  # (n, window) candidate texel centres
        v0, v1 = b - a, c - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        ok = np.abs(den) >= 1e-15
        den = np.where(ok, den, 1.0)[:, None]
        ax, ay = a[:, :1], a[:, 1:]
        l1 = ((px - ax) * v1[:, 1:] - v1[:, :1] * (py - ay)) / den
        l2 = (v0[:, :1] * (py - ay) - (px - ax) * v0[:, 1:]) / den
        l0 = 1.0 - l1 - l2
        inside = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9) & ok[:, None]
        inside &= (dx < size[:, :1]) & (dy < size[:, 1:])
        tri_index, cand = np.nonzero(inside)
        texel_parts.append(py[tri_index, cand] * resolution + px[tri_index, cand])
        tri_parts.append(tri_index + first)
        bary_parts.append(np.stack([l0, l1, l2], axis=-1)[tri_index, cand])
    texel, tri, bary_hits = (np.concatenate(x) for x in (texel_parts, tri_parts, bary_parts))
    order = np.lexsort((tri, texel))  # by texel, then lowest triangle first
    texel, first_hit = np.unique(texel[order], return_index=True)
    tri_id = np.full(resolution * resolution, -1, dtype=np.int64)
    bary = np.zeros((resolution * resolution, 3), dtype=np.float64)
    tri_id[texel] = tri[order][first_hit]
    bary[texel] = bary_hits[order][first_hit]
    return tri_id.reshape(resolution, resolution), bary.reshape(resolution, resolution, 3)


def closest_points_on_triangles(
    points: np.ndarray, tri_xyz: np.ndarray, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each point (P, 3), the closest point on the triangles (F, 3, 3), any units.

    `allowed` (P, F) bool restricts each point to some triangles. Returns (triangle index
    (P,), barycentric (P, 3), closest point (P, 3)). Exact: the plane projection where it
    falls inside the triangle, else the closest point of the three edges. Triangles whose
    bounding sphere is farther than the nearest allowed vertex cannot win and are skipped;
    looped over the (few) points, vectorised over triangles."""
    tri_xyz = np.asarray(tri_xyz, dtype=np.float64)
    centre = tri_xyz.mean(axis=1)
    radius = np.linalg.norm(tri_xyz - centre[:, None], axis=2).max(axis=1)
    out_tri = np.empty(len(points), dtype=np.int64)
    out_bary = np.empty((len(points), 3))
    out_pt = np.empty((len(points), 3))
    for i, p in enumerate(np.asarray(points, dtype=np.float64)):
        ok = np.ones(len(tri_xyz), dtype=bool) if allowed is None else allowed[i]
        corner_dist = np.linalg.norm(tri_xyz - p, axis=2).min(axis=1)
        upper = corner_dist[ok].min()  # a vertex is a surface point: the answer is no farther
        cand = np.flatnonzero(ok & (np.linalg.norm(centre - p, axis=1) - radius <= upper))
        a, b, c = tri_xyz[cand, 0], tri_xyz[cand, 1], tri_xyz[cand, 2]
        normal = np.cross(b - a, c - a)
        area2 = np.maximum((normal**2).sum(1), 1e-30)
        # Barycentrics of the plane projection.
        u = (np.cross(c - b, p - b) * normal).sum(1) / area2
        v = (np.cross(a - c, p - c) * normal).sum(1) / area2
        w = 1.0 - u - v
        inside = (u >= 0) & (v >= 0) & (w >= 0)
        best_b = np.stack([u, v, w], 1)
        best_q = u[:, None] * a + v[:, None] * b + w[:, None] * c
        best_d = np.where(inside, ((best_q - p) ** 2).sum(1), np.inf)
        for e0, e1, i0, i1 in ((a, b, 0, 1), (b, c, 1, 2), (a, c, 0, 2)):
            e = e1 - e0
            t = np.clip(((p - e0) * e).sum(1) / np.maximum((e * e).sum(1), 1e-30), 0.0, 1.0)
            qe = e0 + t[:, None] * e
            de = ((qe - p) ** 2).sum(1)
            better = de < best_d
            be = np.zeros((len(a), 3))
            be[:, i0] = 1.0 - t
            be[:, i1] = t
            best_d = np.where(better, de, best_d)
            best_q = np.where(better[:, None], qe, best_q)
            best_b = np.where(better[:, None], be, best_b)
        k = int(np.argmin(best_d))
        out_tri[i], out_bary[i], out_pt[i] = cand[k], best_b[k], best_q[k]
    return out_tri, out_bary, out_pt


def bfm68_canonical(shared: Path) -> np.ndarray:
    """PRNet's canonical mean face at its 68 landmark texels, (68, 3), y flipped to up."""
    uv_dir = shared / "data" / "prnet-official" / "uv-data"
    kpt = np.loadtxt(uv_dir / "uv_kpt_ind.txt").astype(np.int64)  # (2, 68): col, row
    face_ind = np.loadtxt(uv_dir / "face_ind.txt").astype(np.int64)
    canonical = np.load(uv_dir / "canonical_vertices.npy", allow_pickle=False)
    flat = kpt[1] * 256 + kpt[0]
    rows = np.searchsorted(face_ind, flat)
    assert np.array_equal(face_ind[rows], flat), "landmark texels must be face texels"
    return canonical[rows] * np.array([1.0, -1.0, 1.0])


def lip_triangle_masks(ict: ICTModel) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower) (F,) bool masks of the face triangles the inner-lip landmarks may use.

    Told apart by the `jawOpen` blendshape: its mean vertical displacement per triangle is
    -0.2 to -0.4 cm on the upper lip and about -3 cm on the lower lip and chin (ICT Y up)."""
    jaw_open = ict.expression[ict.expression_names.index("jawOpen")].astype(np.float64)
    drop_cm = jaw_open[ict.face_triangles][:, :, 1].mean(axis=1)
    return drop_cm > UPPER_LIP_MIN_DROP_CM, drop_cm < LOWER_LIP_MAX_DROP_CM


def calibrate_landmarks(
    ict: ICTModel, bfm68: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Put PRNet's BFM-defined 68 on the ICT face surface (DESIGN.md section 1).

    `bfm68` (68, 3): the canonical mean face's landmarks with y flipped to up (canonical
    units). Start: Umeyama similarity (no reflection) onto ICT's own 68; then ICP: closest
    surface point of each moved landmark (61-63 on upper-lip, 65-67 on lower-lip triangles
    only), re-fit the similarity onto those points; repeated until the scale changes by less
    than `ICP_SCALE_TOLERANCE` (relative) or `ICP_MAX_ROUNDS`. Returns (face triangle index
    (68,), barycentric (68, 3), ICT surface points (68, 3) cm, statistics)."""
    tri_xyz = ict.neutral[ict.face_triangles].astype(np.float64)
    upper_ok, lower_ok = lip_triangle_masks(ict)
    allowed = np.ones((68, len(tri_xyz)), dtype=bool)
    allowed[list(UPPER_INNER_LIP)] = upper_ok
    allowed[list(LOWER_INNER_LIP)] = lower_ok

    own68 = ict.neutral[ict.landmark_vertices].astype(np.float64)
    scale, rot, trans = umeyama_similarity(bfm68, own68)
    stats = {"initial_canonical_units_per_cm": 1.0 / scale}
    rounds = 0
    while True:
        rounds += 1
        moved = scale * bfm68 @ rot.T + trans
        tri_idx, bary, surface = closest_points_on_triangles(moved, tri_xyz, allowed)
        new_scale, rot, trans = umeyama_similarity(bfm68, surface)
        converged = abs(new_scale / scale - 1.0) < ICP_SCALE_TOLERANCE
        scale = new_scale
        if converged or rounds == ICP_MAX_ROUNDS:
            break
    moved = scale * bfm68 @ rot.T + trans
    residual_mm = np.linalg.norm(moved - surface, axis=1) * 10.0
    stats |= {
        "icp_rounds": rounds,
        "canonical_units_per_cm": 1.0 / scale,
        "residual_mean_mm": float(residual_mm.mean()),
        "residual_max_mm": float(residual_mm.max()),
        "residual_worst_landmark": int(residual_mm.argmax()),
        "residual_inner_lip_mean_mm": float(residual_mm[[61, 62, 63, 65, 66, 67]].mean()),
    }
    return tri_idx, bary, surface, stats


def grid_triangles(mask: np.ndarray, texel_index: np.ndarray) -> np.ndarray:
    """Two triangles per 2x2 block of mask texels. With photo axes (x = col, y = row) mapped
    to Blender (X = x, Z = -y, depth -> -Y), the order (p00, p10, p01), (p01, p10, p11) gives
    normals along -Y for a frontal face: out of the face."""
    full = mask[:-1, :-1] & mask[:-1, 1:] & mask[1:, :-1] & mask[1:, 1:]
    rows, cols = np.nonzero(full)
    p00 = texel_index[rows, cols]
    p01 = texel_index[rows, cols + 1]
    p10 = texel_index[rows + 1, cols]
    p11 = texel_index[rows + 1, cols + 1]
    tri = np.stack([np.stack([p00, p10, p01], 1), np.stack([p01, p10, p11], 1)], 1)
    return tri.reshape(-1, 3).astype(np.int32)


def build_layout(shared: Path) -> tuple[UVLayout, dict[str, float]]:
    """Every field of the layout from ../shared (ICT-FaceKit + PRNet's uv-data), plus
    statistics (counts, ICP scale and residuals) for the report."""
    ict = load_ict(str(shared))
    r = RESOLUTION
    tris = ict.face_triangles
    corner_texels = uv_to_texel(ict.uvs[ict.face_triangle_uvs], RESOLUTION, np.float64)  # (F, 3, 2)
    tri_id, bary = rasterise_triangles(corner_texels)
    face_mask = tri_id >= 0
    bary = np.round(bary, 5)

    kept, first_corner = np.unique(tris.ravel(), return_index=True)  # first use of each vertex
    remap = np.full(ict.vertex_count, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    ict_triangles = remap[tris].astype(np.int32)
    first_uv = ict.face_triangle_uvs.ravel()[first_corner]  # seam vertices: their first UV
    ict_vertex_texels = np.round(uv_to_texel(ict.uvs[first_uv], RESOLUTION, np.float64),
                                 5).astype(np.float32)

    neutral64 = ict.neutral.astype(np.float64)
    inside = face_mask.reshape(-1)
    texel_tris = tri_id.reshape(-1)[inside]
    texel_bary = bary.reshape(-1, 3)[inside]
    texel_pos = (neutral64[tris[texel_tris]] * texel_bary[:, :, None]).sum(axis=1)  # ICT axes

    # Calibrated landmarks.
    tri_lm, bary_lm, surface_lm, stats = calibrate_landmarks(ict, bfm68_canonical(shared))
    lm_texels = (corner_texels[tri_lm] * bary_lm[:, :, None]).sum(axis=1)
    landmark_texels = np.round(lm_texels, 4).astype(np.float32)

    # Neck cut: more than 1 cm below the lowest jaw landmark (ICT Y up). Jaw = the calibrated
    # (BFM-defined) 0-16 on the ICT surface; the lowest is the chin, 8.
    neck_limit = surface_lm[:17, 1].min() - NECK_MARGIN_CM
    neck_flat = np.zeros(r * r, dtype=bool)
    neck_flat[np.flatnonzero(inside)[texel_pos[:, 1] < neck_limit]] = True
    neck = neck_flat.reshape(r, r)
    mesh_mask = face_mask & ~neck
    face_texels = np.flatnonzero(mesh_mask.reshape(-1)).astype(np.int64)
    texel_index = np.full((r, r), -1, dtype=np.int64)
    texel_index.reshape(-1)[face_texels] = np.arange(len(face_texels))
    triangles = grid_triangles(mesh_mask, texel_index)

    pos_map = np.zeros((r * r, 3))
    pos_map[inside] = texel_pos
    canonical = pos_map[face_texels] * np.array([1.0, -1.0, 1.0])
    canonical_vertices = np.round(canonical, 4).astype(np.float32)

    # Weight mask (paper eq. 1 with DESIGN section 3's regions).
    weight = np.where(face_mask, WEIGHT_FACE, 0.0)
    feature = np.zeros((r, r), dtype=np.uint8)
    for region in FEATURE_REGIONS:
        hull = cv2.convexHull(np.round(lm_texels[list(region)]).astype(np.int32))
        cv2.fillConvexPoly(feature, hull, 1)
    size = 2 * REGION_DILATION_TEXELS + 1
    feature = cv2.dilate(feature, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    weight[(feature > 0) & face_mask] = WEIGHT_FEATURE
    base = np.floor(lm_texels).astype(int)
    for dy in (0, 1):
        for dx in (0, 1):
            weight[base[:, 1] + dy, base[:, 0] + dx] = WEIGHT_LANDMARK
    weight[neck] = WEIGHT_NECK
    weight[~face_mask] = 0.0

    lm_vertex_texels = ict_vertex_texels[remap[ict.landmark_vertices]]
    layout = UVLayout(
        layout_id=LAYOUT_ID,
        resolution=r,
        face_mask=face_mask,
        mesh_mask=mesh_mask,
        face_texels=face_texels,
        triangles=triangles,
        weight_mask=weight.astype(np.float32),
        landmark_texels=landmark_texels,
        ict_landmark_texels=lm_vertex_texels.astype(np.float32),
        ict_landmark_vertices=ict.landmark_vertices.astype(np.int32),
        canonical_vertices=canonical_vertices,
        ict_vertex_ids=kept.astype(np.int32),
        ict_vertex_texels=ict_vertex_texels,
        ict_triangles=ict_triangles,
        ict_neutral=np.round(ict.neutral[kept], 5).astype(np.float32),
        texel_triangle=tri_id.astype(np.int32),
        texel_barycentric=bary.astype(np.float32),
    )
    stats |= {
        "face_texels": int(face_mask.sum()),
        "mesh_vertices": len(face_texels),
        "mesh_triangles": len(triangles),
        "neck_texels": int(neck.sum()),
    }
    return layout, stats


def draw_layout(layout: UVLayout, scale: int = 3) -> np.ndarray:
    """BGR picture of the layout, upright (forehead at the top), `scale` pixels per texel:
    weight regions (16 magenta, 4 orange, 3 green, neck 0 dark grey, outside white), the
    calibrated 68 (red, numbered) and ICT's own 68 (blue)."""
    colours = {16.0: (200, 40, 200), 4.0: (90, 200, 250), 3.0: (170, 200, 170), 0.0: (60, 60, 60)}
    img = np.full((layout.resolution, layout.resolution, 3), 255, dtype=np.uint8)
    for value, colour in colours.items():
        img[(layout.weight_mask == value) & layout.face_mask] = colour
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)

    def to_px(p: np.ndarray) -> tuple[int, int]:
        return round((p[0] + 0.5) * scale), round((p[1] + 0.5) * scale)

    for p in layout.ict_landmark_texels:
        cv2.circle(img, to_px(p), 2, (200, 80, 0), -1, cv2.LINE_AA)
    for i, p in enumerate(layout.landmark_texels):
        cv2.circle(img, to_px(p), 2, (0, 0, 200), -1, cv2.LINE_AA)
        x, y = to_px(p)
        cv2.putText(img, str(i), (x + 3, y - 3), cv2.FONT_HERSHEY_PLAIN, 0.7, (0, 0, 0), 1)
    legend = (
        f"{layout.layout_id}: red = calibrated 68 (BFM-compatible), blue = ICT's own 68",
        "weights: magenta 16 (landmark texels), orange 4 (eyes/nose/mouth), green 3,",
        "dark grey 0 (neck: face mask minus mesh mask), white: outside the face",
    )
    for k, line in enumerate(legend):
        cv2.putText(img, line, (6, 14 + 14 * k), cv2.FONT_HERSHEY_PLAIN, 0.85, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return img


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=Path, default=REPO / "model_weights" / LAYOUT_FILENAME)
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args(argv)
    layout, stats = build_layout(args.shared)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    layout.save(args.out)
    if not args.no_png:
        png = args.out.with_suffix(".png")
        cv2.imwrite(str(png), draw_layout(layout), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    for key, value in stats.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
