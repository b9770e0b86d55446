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


def extract(shared_dir: Path | None = None) -> Path:
    """Extract the ICT tarball into cache/ict-facekit once; return that folder."""
    shared = Path(shared_dir) if shared_dir else DEFAULT_SHARED
    marker = CACHE_DIR / "modes.npz"
    if not marker.is_file():
        archive = shared / "data" / "ict-facekit" / "ict-facekit.tar.xz"
        if not archive.is_file():
            raise FileNotFoundError(f"ICT-FaceKit archive not found at {archive}")
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(CACHE_DIR, filter="data")
        # The archive may hold one top-level folder; flatten it.
        if not marker.is_file():
            inner = next(p for p in CACHE_DIR.iterdir() if (p / "modes.npz").is_file())
            for item in inner.iterdir():
                item.rename(CACHE_DIR / item.name)
    return CACHE_DIR


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, list[list[tuple[int, int]]]]:
    vertices, uvs, faces = [], [], []
    with open(path) as fh:
        for line in fh:
            if line.startswith("v "):
                vertices.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("vt "):
                uvs.append([float(x) for x in line.split()[1:3]])
            elif line.startswith("f "):
                corners = [c.split("/") for c in line.split()[1:]]
                faces.append([(int(c[0]) - 1, int(c[1]) - 1) for c in corners])
    return np.asarray(vertices), np.asarray(uvs), faces


@lru_cache(maxsize=2)
def load_ict(shared_dir: str | None = None) -> ICTModel:
    """Load (and cache) the ICT model from ../shared (extracting it on first use)."""
    folder = extract(Path(shared_dir) if shared_dir else None)
    _, uvs, faces = _read_obj(folder / "generic_neutral_mesh.obj")
    tri_v, tri_t = [], []
    for poly in faces[FACE_POLYGONS.start : FACE_POLYGONS.stop]:
        for k in range(1, len(poly) - 1):
            tri_v.append([poly[0][0], poly[k][0], poly[k + 1][0]])
            tri_t.append([poly[0][1], poly[k][1], poly[k + 1][1]])
    with np.load(folder / "modes.npz", allow_pickle=False) as modes:
        neutral = modes["neutral"].astype(np.float32)
        identity = modes["identity"].astype(np.float32)
        expression = modes["expression"].astype(np.float32)
        names = tuple(str(n) for n in modes["expression_names"])
    indices = json.loads((folder / "vertex_indices.json").read_text())
    return ICTModel(
        neutral=neutral,
        identity=identity,
        expression=expression,
        expression_names=names,
        uvs=uvs,
        face_triangles=np.asarray(tri_v, dtype=np.int64),
        face_triangle_uvs=np.asarray(tri_t, dtype=np.int64),
        landmark_vertices=np.asarray(indices["idx_to_landmark_verts"], dtype=np.int64),
    )
