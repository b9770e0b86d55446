"""Training targets: teacher landmarks + hand labels -> ICT fit -> position maps -> shards.

DESIGN.md section 2. For every training face (dev faces excluded, section 5):

1. observations: the 3DDFA-V2 teacher's 68 3D points (cache/teachers/tddfa68.npz), the hand
   labels where the set has them (300W 68 points with the jaw down-weighted; AFLW 21 points
   through their fitted UV locations), and MediaPipe's 478 points when available;
2. `fit.fit_face`: scaled-orthographic pose + ICT identity + bounded expression;
3. the fitted ICT mesh (kept face vertices only) is rasterised into the layout through the
   precomputed texel -> triangle / barycentric table: a gather and a weighted sum;
4. shards of (storage JPEG bytes, position map float16 in storage pixels, landmark box).

Work is split into fixed chunks of faces; each chunk becomes one shard written atomically,
so an interrupted or crashed run redoes only the missing chunks: nothing is lost or done
twice (`--workers N` runs chunks in parallel processes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.geometry import (
    bilinear_sample,
    displace_position_map,
    landmarks_from_position_map,
    position_map_from_mesh,
    position_map_to_vertices,
)
from ..core.layout import UVLayout
from ..core.pose import estimate_pose, umeyama_similarity
from .faces import FACE_SETS, FaceRecord, dev_names, iter_jpeg_bytes, load_face_set
from .fit import (
    ICT_TO_PM,
    FitResult,
    FitSettings,
    Observations,
    SurfaceBasis,
    fit_face,
    locate_texels_in_ict,
    surface_basis,
)
from .metrics import AFLW19_INDICES, aflw_texel_table, load_point_maps, stored_aflw_uv_shift
from .shards import _maps_path, remove_shards_except, write_manifest, write_shard


@dataclass(frozen=True, eq=False)
class KeptModel:
    """The ICT linear model on the layout's kept vertices, position-map axes, cm, flattened
    for fast evaluation: vertices = (mean + coeffs @ modes).reshape(K, 3)."""

    mean: np.ndarray  # (3K,)
    modes: np.ndarray  # (100 + 53, 3K) float32

    def vertices(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        coeffs = np.concatenate([identity, expression]).astype(np.float32)
        return (self.mean + coeffs @ self.modes).reshape(-1, 3)


def kept_model(layout: UVLayout, neutral: np.ndarray, identity: np.ndarray,
               expression: np.ndarray) -> KeptModel:
    ids = layout.ict_vertex_ids
    mean = (neutral[ids] * ICT_TO_PM).reshape(-1)
    modes = np.concatenate([identity[:, ids], expression[:, ids]]) * ICT_TO_PM
    return KeptModel(mean.astype(np.float32), modes.reshape(modes.shape[0], -1).astype(np.float32))


def landmark_basis(layout: UVLayout, neutral: np.ndarray, identity: np.ndarray,
                   expression: np.ndarray, extra_texels: np.ndarray | None = None) -> SurfaceBasis:
    """Basis at the calibrated 68 (rows 0-67) followed by any extra surface points given as
    texel coordinates (e.g. AFLW's 21 points, MediaPipe's 478 correspondences)."""
    texels = layout.landmark_texels
    if extra_texels is not None:
        texels = np.concatenate([texels, extra_texels])
    vertex_ids, bary = locate_texels_in_ict(layout, texels)
    return surface_basis(neutral, identity, expression, vertex_ids, bary)


def fitted_position_map(layout: UVLayout, model: KeptModel, fit: FitResult) -> np.ndarray:
    """(R, R, 3) float32 target position map in the photo's pixels, NaN outside the face
    mask, z shifted so the face's minimum z is 0 (DESIGN section 3)."""
    verts = fit.to_photo(model.vertices(fit.identity, fit.expression))
    position_map = position_map_from_mesh(verts, layout)
    position_map[..., 2] -= np.nanmin(position_map[..., 2])
    return position_map


# MediaPipe canonical vertex -> calibrated 68 index, for the initial alignment of the
# MediaPipe canonical face onto ICT (eye corners, nose tip, mouth corners, chin, inner lips).
MEDIAPIPE_ANCHORS = {33: 36, 133: 39, 362: 42, 263: 45, 4: 30, 61: 48, 291: 54, 152: 8,
                     13: 62, 14: 66}
MEDIAPIPE_POINTS = 468
"""The iris points 468-477 sit on the eyeballs, which are not part of our layout."""
MEDIAPIPE_MAX_DISTANCE_CM = 0.6
"""Canonical MediaPipe points further than this from the ICT face surface get no partner."""


def read_obj_vertices(path: Path) -> np.ndarray:
    with open(path) as fh:
        return np.array([line.split()[1:4] for line in fh if line.startswith("v ")], float)


def mediapipe_correspondences(
    layout: UVLayout, neutral: np.ndarray, face_triangles: np.ndarray, shared: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe canonical mesh -> ICT face surface, computed once (DESIGN section 2, step 4).

    The canonical face (cm, +Y up, +Z to the viewer: ICT's axes) is aligned to the ICT neutral
    by a similarity on `MEDIAPIPE_ANCHORS` (calibrated 68 surface points), then each point takes
    its closest point on the ICT face polygons. Returns (mediapipe indices (P,), ICT vertex ids
    (P, 3), barycentric (P, 3), distance cm (P,)) for the points within
    `MEDIAPIPE_MAX_DISTANCE_CM`."""
    from .make_layout import closest_points_on_triangles

    canonical = read_obj_vertices(shared / "data" / "mediapipe" / "canonical_face_model.obj")
    lm_ids, lm_bary = locate_texels_in_ict(layout, layout.landmark_texels)
    lm_pos = (neutral[lm_ids] * lm_bary[:, :, None]).sum(1)
    src = canonical[list(MEDIAPIPE_ANCHORS)]
    dst = lm_pos[list(MEDIAPIPE_ANCHORS.values())]
    scale, rot, trans = umeyama_similarity(src, dst)
    moved = scale * canonical[:MEDIAPIPE_POINTS] @ rot.T + trans
    tri_xyz = neutral[face_triangles].astype(np.float64)
    tri, bary, closest = closest_points_on_triangles(moved, tri_xyz)
    dist = np.linalg.norm(closest - moved, axis=1)
    keep = np.flatnonzero(dist <= MEDIAPIPE_MAX_DISTANCE_CM)
    return keep, face_triangles[tri[keep]], bary[keep], dist[keep]


# ---------------------------------------------------------------------------------------------
# The per-face pipeline and the chunked, resumable, parallel driver.

LABEL_WEIGHT_300W_JAW = 0.1
"""300W's jaw is a 2D silhouette convention, not BFM's 3D jaw line (DESIGN section 2)."""
CHUNK_SIZE = 250


@dataclass(frozen=True, eq=False)
class TargetContext:
    """Everything a worker needs, built once per process."""

    layout: UVLayout
    model: KeptModel
    basis: SurfaceBasis
    """Rows 0-67: calibrated 68; then the MediaPipe partners (`mediapipe_index`); then the 21
    AFLW points (`aflw_row0` + AFLW index, at their fitted texels; the ears have no partner:
    zero rows, never used)."""
    mediapipe_index: np.ndarray
    settings: FitSettings
    aflw_uv_shift: np.ndarray
    """(21, 2) texel shifts of AFLW's points from their iBUG sources (metrics.POINT_MAPS_FILE);
    NaN for the ears."""

    @property
    def aflw_row0(self) -> int:
        return 68 + len(self.mediapipe_index)


def build_context(shared: Path, settings: FitSettings | None = None,
                  aflw_uv_shift: np.ndarray | None = None) -> TargetContext:
    """`aflw_uv_shift` (21, 2) defaults to the fitted one of metrics.POINT_MAPS_FILE."""
    from ..core.layout import load_layout
    from .ict import load_ict

    layout = load_layout()
    if aflw_uv_shift is None:
        aflw_uv_shift = stored_aflw_uv_shift(layout.layout_id)
    ict = load_ict(str(shared))
    neutral = ict.neutral.astype(np.float64)
    mp_index, mp_ids, mp_bary, _ = mediapipe_correspondences(
        layout, neutral, ict.face_triangles, shared
    )
    aflw_texels, aflw_weights = aflw_texel_table(layout.landmark_texels, aflw_uv_shift)
    ids, bary = locate_texels_in_ict(
        layout, np.concatenate([layout.landmark_texels, aflw_texels]))
    basis = surface_basis(
        ict.neutral, ict.identity, ict.expression,
        np.concatenate([ids[:68], mp_ids, ids[68:]]),
        np.concatenate([bary[:68], mp_bary, bary[68:]]),
    )
    model = kept_model(layout, ict.neutral, ict.identity, ict.expression)
    return TargetContext(layout, model, with_aflw_rows(basis, np.nan_to_num(aflw_weights)),
                         mp_index, settings or FitSettings(),
                         np.asarray(aflw_uv_shift, dtype=np.float64))


def with_aflw_rows(basis: SurfaceBasis, aflw_weights: np.ndarray) -> SurfaceBasis:
    """Turn the basis's last M rows (AFLW's texels, `metrics.aflw_texel_table`) into AFLW's 21
    points, each the mean of its texels ((21, M) weights; the model is linear in its points,
    so the fit sees each AFLW point exactly where the evaluation reads it)."""
    m = aflw_weights.shape[1]
    keep = basis.point_count - m

    def combine(arr: np.ndarray, axis_points: int) -> np.ndarray:
        head, tail = np.split(arr, [keep], axis=axis_points)
        mixed = np.einsum("ap,...pc->...ac", aflw_weights, tail)
        return np.concatenate([head, mixed], axis=axis_points)

    return SurfaceBasis(combine(basis.mean, 0), combine(basis.identity, 1),
                        combine(basis.expression, 1))


def observations_for(
    ctx: TargetContext, teacher68: np.ndarray, record: FaceRecord,
    mediapipe478: np.ndarray | None, use_labels: bool,
) -> Observations:
    labels = label_rows = label_weights = None
    if use_labels and record.set_name == "300w" and record.landmarks is not None:
        labels = record.landmarks
        label_rows = np.arange(68)
        label_weights = np.where(np.arange(68) < 17, LABEL_WEIGHT_300W_JAW, 1.0)
    elif use_labels and record.set_name == "aflw" and record.landmarks is not None:
        points = np.array([i for i in AFLW19_INDICES if record.visible is None
                           or record.visible[i]], dtype=np.int64)
        labels = record.landmarks[points]
        label_rows = ctx.aflw_row0 + points
        label_weights = np.ones(len(points))
    dense = dense_rows = None
    if mediapipe478 is not None and np.isfinite(mediapipe478).all():
        dense = mediapipe478[ctx.mediapipe_index]
        dense_rows = 68 + np.arange(len(ctx.mediapipe_index))
    return Observations(
        teacher=teacher68.astype(np.float64), teacher_rows=np.arange(68),
        labels=labels, label_rows=label_rows, label_weights=label_weights,
        dense=dense, dense_rows=dense_rows,
    )


LABEL_CORRECTION_PASSES = ((10.0, 1.0), (2.0, 0.05))
"""(sigma in UV texels, ridge) of the label correction's two passes. The first reaches about
the mean spacing of the 68 landmark texels (10.9), so neighbouring corrections blend and the
field fades 2-3 landmarks away; its large ridge keeps only the smooth part of the residuals
(points 2 texels apart with opposite residuals, e.g. eyelids on a more open eye, would need
huge opposite weights and throw lobes of up to 2.5x the residual 10 texels away). The second,
local pass fits what is left, such as the eye's opening, within a few texels."""
LABEL_CORRECTION_MAX = 0.10
"""Label points further than this fraction of the face diagonal from the fit are treated as
label errors and not pulled to."""
PSEUDO_LABEL_MAX_YAW_DEG = 40.0
"""UTKFace (no hand labels) takes MediaPipe's 68 as labels up to this |yaw| of the fitted
head. Why: the fit leans on the 3DDFA-V2 teacher, whose 68 sit measurably off 300W's
conventions (eyes 1.0 %, mouth 1.6 % of the face too high on 300W dev), and the fit-only
UTKFace targets inherited it (mouth 1.9 % too high, nose 1.6 % too low against MediaPipe's 68,
over 888 UTKFace faces with |yaw| < 30); MediaPipe's 68 were chosen on 300W training labels
(2.00 % NME on 300W dev, no offset) but weaken on turned heads (AFLW 60-90: 9.2 %)."""


def pseudo_labels(record: FaceRecord, position_map: np.ndarray, layout: UVLayout,
                  mediapipe478: np.ndarray | None, mediapipe68: list[int] | None
                  ) -> np.ndarray | None:
    """(68, 2) MediaPipe's 68 as stand-in labels for an unlabelled (UTKFace) face whose fitted
    head turns at most PSEUDO_LABEL_MAX_YAW_DEG; None otherwise (labelled sets, no MediaPipe
    detection, turned head)."""
    if record.set_name != "utkface":
        return None
    return mediapipe_pseudo68(position_map, layout, mediapipe478, mediapipe68)


def mediapipe_pseudo68(position_map: np.ndarray, layout: UVLayout,
                       mediapipe478: np.ndarray | None, mediapipe68: list[int] | None
                       ) -> np.ndarray | None:
    """(68, 2) MediaPipe's 68 (photo px) when it found the face and the fitted head turns at
    most PSEUDO_LABEL_MAX_YAW_DEG, else None."""
    if mediapipe478 is None or mediapipe68 is None:
        return None
    points = np.asarray(mediapipe478, dtype=np.float64)[mediapipe68, :2]
    if not np.isfinite(points).all():
        return None
    yaw = estimate_pose(position_map_to_vertices(position_map, layout), layout).yaw_deg
    return points if abs(yaw) <= PSEUDO_LABEL_MAX_YAW_DEG else None


@dataclass(frozen=True, eq=False)
class LabelPoints:
    """Label points on the layout: label l (labels[l], photo px) is the mean of the x/y of the
    texels whose `group` is l (one texel for iBUG's points; AFLW's eye and mouth centres
    average several)."""

    texels: np.ndarray
    """(M, 2) continuous texel positions (x, y)."""
    group: np.ndarray
    """(M,) int index into `labels` of each texel."""
    labels: np.ndarray
    """(L, 2) float64 photo px."""

    def read(self, position_map: np.ndarray, layout: UVLayout) -> np.ndarray:
        """(L, 2) the label points' x/y on a position map."""
        xy = bilinear_sample(position_map, self.texels, layout.face_mask)[:, :2]
        total = np.zeros((len(self.labels), 2))
        np.add.at(total, self.group, xy)
        return total / np.bincount(self.group, minlength=len(self.labels))[:, None]


def label_points(record: FaceRecord, layout: UVLayout, aflw_uv_shift: np.ndarray,
                 pseudo68: np.ndarray | None = None) -> LabelPoints | None:
    """The labels a target map is pulled onto, or None. 300W: the 51 non-jaw points (its jaw is
    a 2D silhouette, DESIGN section 5). AFLW: each visible, labelled one of the 19 evaluated
    points at its fitted texels (`metrics.aflw_texel_table`). Unlabelled sets: the 51 non-jaw
    points of `pseudo68` (`pseudo_labels`) when given."""
    if record.set_name == "aflw":
        if record.landmarks is None:
            return None
        texels, weights = aflw_texel_table(layout.landmark_texels, aflw_uv_shift)
        wanted = [i for i in AFLW19_INDICES
                  if (record.visible is None or record.visible[i])
                  and np.isfinite(record.landmarks[i]).all()]
        if not wanted:
            return None
        owner = np.argmax(np.nan_to_num(weights) > 0, axis=0)  # (M,) AFLW index per texel
        use = np.isin(owner, wanted)
        group = np.searchsorted(np.array(wanted), owner[use])
        return LabelPoints(texels[use], group,
                           np.asarray(record.landmarks, np.float64)[wanted, :2])
    source = record.landmarks if record.set_name == "300w" else pseudo68
    return None if source is None else ibug_label_points(layout, source)


def ibug_label_points(layout: UVLayout, labels68: np.ndarray) -> LabelPoints:
    """The 51 non-jaw points of iBUG-68 labels (photo px) at the calibrated texels."""
    rows = np.arange(17, 68)
    return LabelPoints(np.asarray(layout.landmark_texels, np.float64)[rows],
                       np.arange(len(rows)), np.asarray(labels68, np.float64)[rows, :2])


def label_corrections(position_map: np.ndarray, layout: UVLayout, points: LabelPoints
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Controls for `displace_position_map` that move the fitted map's label points onto the
    labels in the image plane: ((K, 2) texels, (K, 2) x/y offsets in photo px). Every texel
    of a label moves by that label's residual; a residual beyond LABEL_CORRECTION_MAX of the
    face diagonal is a label error and not pulled to."""
    fitted = landmarks_from_position_map(position_map, layout)[:, :2].astype(np.float64)
    diagonal = float(np.linalg.norm(np.nanmax(fitted, axis=0) - np.nanmin(fitted, axis=0)))
    residual = points.labels - points.read(position_map, layout)
    offsets = residual[points.group]
    keep = (np.isfinite(offsets).all(axis=1)
            & (np.linalg.norm(offsets, axis=1) <= LABEL_CORRECTION_MAX * diagonal))
    return points.texels[keep], offsets[keep]


def label_aligned_map(position_map: np.ndarray, layout: UVLayout,
                      points: LabelPoints) -> np.ndarray:
    """The whole map moved in the image plane by the 2D similarity (scale, in-plane rotation,
    shift; z scaled alike, so the surface keeps its shape) that best takes its label points
    onto the labels. Why: the fit leaves the whole face off the labels (label minus fit, mean
    over 40-80 training faces per set, % of the landmark box: 300W +0.9 / +0.8, AFLW +0.7 /
    +0.2, UTKFace's pseudo-labels +1.2 / +0.6 in x / y; 1.6-1.9 % per face), and the local
    corrections move only the texels near the labels, so the targets had bumps at the
    landmarks that the network smoothed away: its landmarks inherited the offset (300W dev,
    session-5 weights: -0.6 / -0.7 %). Label points beyond LABEL_CORRECTION_MAX of the face
    diagonal are ignored; fewer than LABEL_ALIGN_MIN_POINTS left: unchanged."""
    fitted = points.read(position_map, layout)
    diagonal = float(np.linalg.norm(np.nanmax(fitted, axis=0) - np.nanmin(fitted, axis=0)))
    residual = np.linalg.norm(points.labels - fitted, axis=1)
    keep = np.isfinite(residual) & (residual <= LABEL_CORRECTION_MAX * diagonal)
    if keep.sum() < LABEL_ALIGN_MIN_POINTS:
        return position_map
    scale, rotation, shift = umeyama_similarity(fitted[keep], points.labels[keep])
    out = np.array(position_map, dtype=np.float32, copy=True)
    out[..., :2] = (scale * out[..., :2].astype(np.float64) @ rotation.T + shift)
    out[..., 2] *= np.float32(scale)
    return out


LABEL_ALIGN_MIN_POINTS = 4
"""A similarity has 4 degrees of freedom in the plane: fewer label points leave the map as
the fit made it."""


def label_corrected_map(position_map: np.ndarray, layout: UVLayout,
                        points: LabelPoints | None) -> np.ndarray:
    """The fitted target map with its x/y pulled onto `points`' labels (unchanged for None):
    first as a whole (`label_aligned_map`), then locally (LABEL_CORRECTION_PASSES)."""
    if points is None:
        return position_map
    position_map = label_aligned_map(position_map, layout, points)
    for sigma, ridge in LABEL_CORRECTION_PASSES:
        texels, offsets = label_corrections(position_map, layout, points)
        position_map = displace_position_map(position_map, texels, offsets, sigma, ridge)
    return position_map


def fitted_landmarks(ctx: TargetContext, fit: FitResult) -> np.ndarray:
    """(68, 3) calibrated landmarks of a fit, photo pixels."""
    return fit.to_photo(ctx.basis.subset(np.arange(68)).points(fit.identity, fit.expression))


def load_teachers(cache: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict]]:
    """name -> teacher arrays per set: (3DDFA-V2 68, MediaPipe 478 or missing)."""
    tddfa: dict[str, dict[str, np.ndarray]] = {}
    with np.load(cache / "teachers" / "tddfa68.npz", allow_pickle=False) as t:
        for set_name in FACE_SETS:
            names = [str(n) for n in t[f"{set_name}_names"]]
            tddfa[set_name] = dict(zip(names, t[f"{set_name}_landmarks"], strict=True))
    mediapipe: dict[str, dict] = {}
    for set_name in FACE_SETS:
        path = cache / "teachers" / f"mediapipe478_{MEDIAPIPE_FILES[set_name]}.npz"
        mediapipe[set_name] = {}
        if path.is_file():
            with np.load(path, allow_pickle=False) as m:
                for name, found, pts in zip(m["names"], m["detected"], m["points"], strict=True):
                    if found:
                        mediapipe[set_name][str(name)] = pts
    return tddfa, mediapipe


MEDIAPIPE_FILES = {"300w": "300w", "aflw": "aflw_gt_crop", "utkface": "utkface"}
TEACHER_FILES = ("tddfa68.npz", *(f"mediapipe478_{stem}.npz" for stem in MEDIAPIPE_FILES.values()))


_CTX: TargetContext | None = None
_TEACHERS: tuple[dict, dict] | None = None
_BLAS_LIMIT: object = None
_MEDIAPIPE68: list[int] | None = None
_SHARED: str | None = None


def _init_worker(shared: str, cache: str) -> None:
    global _CTX, _TEACHERS, _BLAS_LIMIT, _MEDIAPIPE68, _SHARED
    from threadpoolctl import threadpool_limits

    # One BLAS thread per worker: with OpenBLAS's default (all cores) in every worker the
    # small solves of the fit oversubscribe the CPU; measured 1 face/s against 20 face/s.
    _BLAS_LIMIT = threadpool_limits(1)
    _SHARED = shared
    _CTX = build_context(Path(shared))
    _TEACHERS = load_teachers(Path(cache))
    _MEDIAPIPE68 = load_point_maps()["mediapipe68"]


def _make_chunk(job: tuple[str, int, list[str], str]) -> dict[str, float]:
    """Fit and rasterise one chunk of faces, write its shard. Returns summary statistics."""
    set_name, chunk, names, out_dir = job
    assert _CTX is not None and _TEACHERS is not None
    ctx, (tddfa, mediapipe) = _CTX, _TEACHERS
    wanted = set(names)
    records = [r for r in load_face_set(set_name, _SHARED) if r.name in wanted]
    jpegs, maps, boxes, out_names, yaws = [], [], [], [], []
    teacher_rms, label_rms, rejected, pseudo_labelled = [], [], 0, 0
    for record, jpeg in iter_jpeg_bytes(records, _SHARED):
        obs = observations_for(ctx, tddfa[set_name][record.name], record,
                               mediapipe[set_name].get(record.name), use_labels=True)
        fit = fit_face(ctx.basis, obs, ctx.settings)
        face_px = float(np.linalg.norm(np.ptp(obs.teacher[:, :2], axis=0)))
        if not np.isfinite(fit.teacher_rms_px) or fit.teacher_rms_px > REJECT_RMS * face_px:
            rejected += 1
            continue
        position_map = fitted_position_map(ctx.layout, ctx.model, fit)
        pseudo68 = pseudo_labels(record, position_map, ctx.layout,
                                 mediapipe[set_name].get(record.name), _MEDIAPIPE68)
        pseudo_labelled += pseudo68 is not None
        position_map = label_corrected_map(
            position_map, ctx.layout,
            label_points(record, ctx.layout, ctx.aflw_uv_shift, pseudo68))
        lm = landmarks_from_position_map(position_map, ctx.layout)
        jpegs.append(jpeg)
        maps.append(position_map.astype(np.float16))
        boxes.append([*lm[:, :2].min(0), *lm[:, :2].max(0)])
        out_names.append(record.name)
        yaws.append(record.yaw_deg)
        teacher_rms.append(fit.teacher_rms_px / face_px)
        if np.isfinite(fit.label_rms_px):
            label_rms.append(fit.label_rms_px / face_px)
    write_shard(Path(out_dir) / f"{set_name}-{chunk:04d}", jpegs,
                np.stack(maps) if maps else np.zeros((0, 256, 256, 3), np.float16),
                np.asarray(boxes, np.float32).reshape(-1, 4), out_names,
                [set_name] * len(out_names), np.asarray(yaws, np.float32))
    return {"faces": len(out_names), "rejected": rejected,
            "teacher_rms": float(np.sum(teacher_rms)), "label_rms": float(np.sum(label_rms)),
            "labelled": len(label_rms), "pseudo_labelled": pseudo_labelled}


REJECT_RMS = 0.08
"""Reject a fit whose RMS distance to the teacher's 68 exceeds 8 % of the face's diagonal."""


def training_jobs(out_dir: Path, shared: Path | None = None
                  ) -> list[tuple[str, int, list[str], str]]:
    """Fixed chunks of the training faces (dev faces never enter), in a stable order (faces
    from `shared`, default ../shared)."""
    jobs = []
    for set_name in FACE_SETS:
        dev = dev_names(set_name, shared)
        names = [r.name for r in load_face_set(set_name, shared) if r.name not in dev]
        for chunk, start in enumerate(range(0, len(names), CHUNK_SIZE)):
            jobs.append((set_name, chunk, names[start : start + CHUNK_SIZE], str(out_dir)))
    return jobs


def ensure_teachers(shared: Path, cache: Path, mediapipe: bool = True) -> None:
    """Run the teachers whose cache files are missing, side by side in two processes: MediaPipe
    in its own pinned virtual environment (created on first use; a subprocess per face set,
    watched from a thread) while 3DDFA-V2 runs here on one torch thread. Each file is written
    atomically, so an interrupted run redoes only the missing ones. `mediapipe=False` skips the
    dense teacher (no extra venv; the fit then uses the 68 and the hand labels only)."""
    from concurrent.futures import ThreadPoolExecutor

    from . import mediapipe_teacher, tddfa

    teachers = cache / "teachers"
    need_dense = mediapipe and not all((teachers / f"mediapipe478_{stem}.npz").is_file()
                         for stem in MEDIAPIPE_FILES.values())
    with ThreadPoolExecutor(1) as pool:
        dense = None
        if need_dense:
            print("dense teacher (MediaPipe FaceMesh, own venv) on every face ...")
            dense = pool.submit(mediapipe_teacher.run_all, teachers, shared / "data" / "faces")
        if not (teachers / "tddfa68.npz").is_file():
            print("landmark teacher (3DDFA-V2) on every face ...")
            tddfa.run_teacher_on_all(teachers / "tddfa68.npz", shared)
        if dense is not None:
            dense.result()  # re-raises a failed MediaPipe run


def ensure_point_maps(shared: Path, cache: Path) -> None:
    """Fit metrics.POINT_MAPS_FILE on the training faces when it lacks the AFLW texel shifts
    for this layout (the targets pull AFLW's labels there)."""
    from ..core.layout import load_layout
    from .point_maps import write_point_maps

    try:
        stored_aflw_uv_shift(load_layout().layout_id)
    except RuntimeError:
        print("fitting the point mappings (AFLW texel shifts) on the training faces ...")
        write_point_maps(cache / "teachers", shared)


def targets_stamp(cache: Path, jobs: list[tuple[str, int, list[str], str]]) -> dict:
    """The inputs the shards depend on (fit settings, layout, teacher files' SHA-256, which
    faces each chunk holds); a chunk recorded under another stamp is redone."""
    import hashlib
    from dataclasses import asdict

    from ..net.weights import file_sha256

    assert _CTX is not None
    teachers = cache / "teachers"
    chunks = hashlib.sha256(json.dumps([[j[0], j[1], j[2]] for j in jobs]).encode()).hexdigest()
    return {
        "fit": asdict(_CTX.settings),
        "layout_id": _CTX.layout.layout_id,
        "reject_rms": REJECT_RMS,
        "label_weight_300w_jaw": LABEL_WEIGHT_300W_JAW,
        "label_correction": [LABEL_CORRECTION_PASSES, LABEL_CORRECTION_MAX,
                             "similarity", LABEL_ALIGN_MIN_POINTS],
        "aflw_uv_shift": np.nan_to_num(_CTX.aflw_uv_shift, nan=0.0).tolist(),
        "pseudo_labels": {"utkface": ["mediapipe68", _MEDIAPIPE68, PSEUDO_LABEL_MAX_YAW_DEG]},
        "chunk_size": CHUNK_SIZE,
        "teachers": {name: file_sha256(teachers / name) for name in TEACHER_FILES
                     if (teachers / name).is_file()},
        "chunks": chunks,
    }


def make_targets(out_dir: Path, shared: Path, cache: Path, workers: int = 2,
                 mediapipe: bool = True) -> int:
    """Teachers (if not cached), then fit + rasterise in `workers` processes, one shard per
    chunk, resumable through per-chunk done records (parallel.py). Returns the number of
    chunks still missing (0 = complete)."""
    from .parallel import read_records, run_chunks

    ensure_teachers(shared, cache, mediapipe=mediapipe)
    ensure_point_maps(shared, cache)
    # Load once in the parent: a broken input fails here with its own message instead of
    # as a broken pool, and the forked workers inherit the loaded context.
    _init_worker(str(shared), str(cache))
    jobs = [(f"{job[0]}-{job[1]:04d}", job) for job in training_jobs(out_dir, shared)]

    def outputs_exist(chunk_id: str) -> bool:
        stem = Path(out_dir) / chunk_id
        return stem.with_name(stem.name + ".npz").is_file() and _maps_path(stem).is_file()

    stamp = targets_stamp(cache, [job for _, job in jobs])
    out_dir.mkdir(parents=True, exist_ok=True)
    done = read_records(out_dir, [chunk_id for chunk_id, _ in jobs], stamp, outputs_exist)
    stale = remove_shards_except(out_dir, set(done))
    if stale:
        print(f"removed {len(stale)} shard(s) made under other settings or left unfinished")
    run = run_chunks(jobs, _make_chunk, out_dir, workers, None, (), desc="target chunks",
                     stamp=stamp, outputs_exist=outputs_exist)
    write_manifest(out_dir)
    total = run.totals()
    if total.get("faces"):
        labelled = max(total.get("labelled", 0.0), 1.0)
        print(f"faces {total['faces']:.0f}, rejected {total['rejected']:.0f}, "
              f"mean RMS to teacher {100 * total['teacher_rms'] / total['faces']:.2f} % and "
              f"to hand labels {100 * total['label_rms'] / labelled:.2f} % of the face "
              f"diagonal; {total.get('pseudo_labelled', 0):.0f} unlabelled faces pulled onto "
              f"MediaPipe's 68")
    if run.missing:
        print(f"{len(run.missing)} chunk(s) not done ({', '.join(run.missing[:5])}"
              f"{' ...' if len(run.missing) > 5 else ''}); run the command again to retry them")
        for chunk_id, message in run.failed.items():
            print(f"  {chunk_id}: {message}")
    return len(run.missing)
