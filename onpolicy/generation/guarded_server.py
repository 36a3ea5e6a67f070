"""`python -m onpolicy.generation.guarded_server ARGS...`: vLLM's OpenAI-compatible server (`vllm serve ARGS`)
with its API key guarding every route.

vLLM's `--api-key` (or `VLLM_API_KEY`) guards `/v1` and a few other prefixes only; the dev-mode routes a server
onpolicy starts needs (`/collective_rpc`, `/update_weight_version`, `/reset_prefix_cache`, `/weight_info`) stay
open to any local process, which could load other weights into the policy's server, or fake the weight version
that the staleness check reads. Here vLLM's own authentication middleware guards every path, `/health`
included: onpolicy sends the key on each request it makes. The key comes in `VLLM_API_KEY` (an environment
variable, which other users cannot read, where a command-line flag would show in `ps`).
"""

from __future__ import annotations

import runpy

from vllm.entrypoints.serve.middleware import authenticate

if __name__ == "__main__":
    authenticate.GUARDED_PREFIX = ("/",)  # read by the middleware on every request
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)
