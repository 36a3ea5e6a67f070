#!/usr/bin/env bash
# Set up (or update) .venv, then run the main demo (configs/identity.yaml) on the embedded SmolLM2-135M-Instruct.
#   scripts/demo.sh                       # configs/identity.yaml
#   scripts/demo.sh rounds=5              # with config overrides
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cap=()
[ -x ../shared/bin/capped ] && cap=(../shared/bin/capped 16G)
exec "${cap[@]}" .venv/bin/onpolicy run configs/identity.yaml "$@"
