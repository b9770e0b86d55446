#!/usr/bin/env bash
# Create or update .venv at the repo root with pinned versions (constraints.txt).
# Re-installs only when pyproject.toml or constraints.txt changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
stamp="$venv/.prn-installed"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ]; then
    echo "prn-blender: creating $venv with $("$py" --version 2>&1)" >&2
    "$py" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "prn-blender: installing pinned dependencies into .venv (first run takes a few minutes)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$root/constraints.txt" -e "$root[dev]" 2>&1 | grep -v "is ignored: it is neither a file" >&2 || true
    "$venv/bin/python" -c "import torch, cv2, numpy, bpy" \
        || { echo "prn-blender: dependency install failed" >&2; exit 1; }
    echo "$want" > "$stamp"
fi
