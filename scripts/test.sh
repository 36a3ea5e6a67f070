#!/usr/bin/env bash
# Set up (or update) .venv, then run the whole test suite, slow end-to-end tests included.
#   scripts/test.sh                 # everything
#   scripts/test.sh -m "not slow"   # the quick tiers only; any pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
# Under a memory cap where the team's `capped` tool is present: a runaway engine is killed, not the machine.
cap=()
[ -x ../shared/bin/capped ] && cap=(../shared/bin/capped 16G)
.venv/bin/ruff check onpolicy reward tests benchmarks
exec "${cap[@]}" .venv/bin/python -m pytest "$@"
