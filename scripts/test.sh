#!/usr/bin/env bash
# Set up (or update) .venv, then run the whole test suite, slow end-to-end tests included.
#   scripts/test.sh                 # everything
#   scripts/test.sh -m "not slow"   # the quick tiers only; any pytest arguments pass through
#   ONPOLICY_TEST_WORKERS=1 scripts/test.sh   # one process, in order (default: 2 workers, a share of the cores each)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The browser tests drive the labelling page in Debian's Chromium (Playwright's own browser download needs a
# network this project does not assume); where it cannot be installed here, those tests say what is missing.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo -n)
  echo "test: installing chromium for the browser tests" >&2
  { "${sudo[@]}" apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq chromium >/dev/null; }; } \
    || echo "test: could not install chromium: the browser tests will fail" >&2
fi
export WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
# Under a memory cap where the team's `capped` tool is present: a runaway engine is killed, not the machine.
cap=()
[ -x ../shared/bin/capped ] && cap=(../shared/bin/capped 16G)
.venv/bin/ruff check onpolicy reward tests benchmarks
# Two workers, whole files each (module fixtures are shared finished runs): an end-to-end test spends most of its
# time on one core (imports, engine start-up, disk), so two of them side by side nearly halve the suite's wall
# time on 2 cores (tests/conftest.py pins each worker to its own cores). More workers would multiply the memory.
workers=${ONPOLICY_TEST_WORKERS:-2}
parallel=()
[ "$workers" -gt 1 ] && parallel=(-n "$workers" --dist loadfile)
exec "${cap[@]}" .venv/bin/python -m pytest "${parallel[@]}" "$@"
