#!/usr/bin/env bash
# Reconstruct a photo (default: skimage's astronaut) into out/: .blend, .obj, .glb and a PNG preview.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/ensure_venv.sh"
exec "$root/.venv/bin/python" -m prn_blender.inference.cli demo "$@"
