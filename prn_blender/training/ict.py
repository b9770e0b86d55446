"""ICT-FaceKit (MIT; ../shared/data/ict-facekit): the face model our UV layout and our training
targets are built from. numpy only.

Units: centimetres. Axes: +Y up, +Z towards the viewer, the subject's right side at -X.
Model: mesh = neutral + identity^T a + expression^T b, with a ~ N(0, 1) (the identity modes are
already scaled by their standard deviation) and b in [0, 1] (ARKit-like blendshapes).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SHARED = REPO.parent / "shared"
CACHE_DIR = REPO / "cache" / "ict-facekit"
FACE_POLYGONS = range(0, 9230)
"""ICT's "face" region (polygons 0-9229, vertices 0-9408): the only polygons in our layout."""


@dataclass(frozen=True, eq=False)
class ICTModel:
    """The parts of ICT-FaceKit we use. Arrays in ICT axes (cm, +Y up, +Z to the viewer)."""

    neutral: np.ndarray
    """(V, 3) float32 neutral vertex positions."""
    identity: np.ndarray
    """(100, V, 3) float32 identity modes (N(0, 1) coefficients)."""
    expression: np.ndarray
    """(53, V, 3) float32 expression blendshapes ([0, 1] weights)."""
    expression_names: tuple[str, ...]
    uvs: np.ndarray
    """(U, 2) float64 texture coordinates of the OBJ (`vt`)."""
    face_triangles: np.ndarray
    """(F, 3) int64 vertex indices: the face polygons 0-9229, quads split (a,b,c),(a,c,d)."""
    face_triangle_uvs: np.ndarray
    """(F, 3) int64 indices into `uvs` of each triangle corner."""
    landmark_vertices: np.ndarray
    """(68,) int64 ICT's own Multi-PIE 68 landmark vertices (iBUG order)."""
    regions: dict[str, tuple[int, int, int, int]]
    """Region name -> (first vertex, last vertex, first polygon, last polygon), inclusive
    (regions.json, transcribed from ICT's README): "Face" is (0, 9408, 0, 9229)."""

    @property
    def vertex_count(self) -> int:
        return int(self.neutral.shape[0])

    def face_triangle_texels(self, resolution: int) -> np.ndarray:
        """(F, 3, 2) float64 continuous texel coordinates (x = col, y = row; texel centres at
        integers, core.frames convention) of each face triangle's corners, per corner UV (so
        the 138 seam vertices take the UV of the side they are on)."""
        uv = self.uvs[self.face_triangle_uvs]
        return np.stack([uv[..., 0] * resolution - 0.5, (1.0 - uv[..., 1]) * resolution - 0.5], -1)


def extract(shared_dir: Path | None = None) -> Path:
    """Extract ../shared/data/ict-facekit/ict-facekit.tar.xz into cache/ict-facekit once
    (idempotent: skipped when modes.npz is already there) and return that folder."""
    shared = Path(shared_dir) if shared_dir else DEFAULT_SHARED
    marker = CACHE_DIR / "modes.npz"
    if marker.is_file():
        return CACHE_DIR
    archive = shared / "data" / "ict-facekit" / "ict-facekit.tar.xz"
    if not archive.is_file():
        raise FileNotFoundError(f"ICT-FaceKit archive not found at {archive}")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE_DIR, filter="data")
    if not marker.is_file():  # the archive held one top-level folder: flatten it
        inner = next(p for p in CACHE_DIR.iterdir() if (p / "modes.npz").is_file())
        for item in inner.iterdir():
            item.rename(CACHE_DIR / item.name)
        inner.rmdir()
    return CACHE_DIR


def _read_obj_faces(path: Path) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    """(UVs (U, 2) float64, polygons as lists of 0-based (vertex, uv) corners) of an OBJ.
    Vertex positions come from modes.npz (the same numbers), so `v` lines are skipped."""
    uvs, faces = [], []
    with open(path) as fh:
        for line in fh:
            if line.startswith("vt "):
                uvs.append([float(x) for x in line.split()[1:3]])
            elif line.startswith("f "):
                corners = [c.split("/") for c in line.split()[1:]]
                faces.append([(int(c[0]) - 1, int(c[1]) - 1) for c in corners])
    return np.asarray(uvs, dtype=np.float64), faces


def _triangulate(polygons: list[list[tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Fan-triangulate polygons (quad (a, b, c, d) -> (a, b, c), (a, c, d)): (vertex indices
    (F, 3), uv indices (F, 3)), both int64, in polygon order."""
    tri_v, tri_t = [], []
    for poly in polygons:
        for k in range(1, len(poly) - 1):
            tri_v.append([poly[0][0], poly[k][0], poly[k + 1][0]])
            tri_t.append([poly[0][1], poly[k][1], poly[k + 1][1]])
    return np.asarray(tri_v, dtype=np.int64), np.asarray(tri_t, dtype=np.int64)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@lru_cache(maxsize=2)
def load_ict(shared_dir: str | None = None) -> ICTModel:
    """Load (and cache) the ICT model from ../shared, extracting it on first use.

    The result is shared between callers: its arrays are read-only (copy before editing).
    About 0.8 s and 60 MB (identity and expression widened from float16 to float32)."""
    folder = extract(Path(shared_dir) if shared_dir else None)
    uvs, polygons = _read_obj_faces(folder / "generic_neutral_mesh.obj")
    face_triangles, face_triangle_uvs = _triangulate(
        polygons[FACE_POLYGONS.start : FACE_POLYGONS.stop]
    )
    with np.load(folder / "modes.npz", allow_pickle=False) as modes:
        neutral = modes["neutral"].astype(np.float32)
        identity = modes["identity"].astype(np.float32)
        expression = modes["expression"].astype(np.float32)
        names = tuple(str(n) for n in modes["expression_names"])
    indices = json.loads((folder / "vertex_indices.json").read_text())
    region_table = json.loads((folder / "regions.json").read_text())["regions"]
    regions = {
        r["name"]: (r["vertex_first"], r["vertex_last"], r["polygon_first"], r["polygon_last"])
        for r in region_table
    }
    return ICTModel(
        neutral=_read_only(neutral),
        identity=_read_only(identity),
        expression=_read_only(expression),
        expression_names=names,
        uvs=_read_only(uvs),
        face_triangles=_read_only(face_triangles),
        face_triangle_uvs=_read_only(face_triangle_uvs),
        landmark_vertices=_read_only(
            np.asarray(indices["idx_to_landmark_verts"], dtype=np.int64)
        ),
        regions=regions,
    )
