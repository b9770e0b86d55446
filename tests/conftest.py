"""Shared test fixtures. ../shared (read-only data) sits beside the repo; tests needing it skip."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared not present")
