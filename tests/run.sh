#!/usr/bin/env bash
# The test command: sets up the environment on a fresh machine, then runs the whole suite.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -m "not slow"`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m ruff check --no-cache --quiet .  # lint first: seconds, and pyproject.toml says which rules
python -m pytest -p no:cacheprovider "$@"
