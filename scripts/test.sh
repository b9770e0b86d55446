#!/usr/bin/env bash
# Run the whole test suite (lint + pytest), setting up .venv first when needed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/ensure_venv.sh"
cd "$root"
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -ra "$@"
