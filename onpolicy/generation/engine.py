"""Generation: the current policy, served by one in-process vLLM engine, samples K responses per prompt.

The engine is built once per job and receives each round's new weights in place (`load_weights`), through
vLLM's own `reload_weights`: 0.5-0.7 s for a 135M model on CPU (a third of it vLLM re-packing the layers for
oneDNN), against 7 s to rebuild an eager engine and ~2 min a compiled one (benchmarks/bench_sync.py). It runs in
this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so that the weights can be handed over without a copy through
another process, and its KV cache is bounded: vLLM's CPU build otherwise sizes it from all free RAM and starves
the trainer beside it. The engine is seeded once: per-request seeds crash vLLM's CPU build on split prefills.
vLLM's usage statistics are off: their background thread swaps `sys.stdout` for a buffer while it probes the
CPU, and whatever the job prints meanwhile is lost (and there is nobody to send them to offline). Both are
environment variables vLLM reads when an engine starts, set by `in_process_engine_environment` as the engine
starts (importing this module changes nothing).

On a GPU it shares with the trainer, the engine sleeps while the update runs (`rest`, vLLM's sleep mode, at the
level the layout chose): level 1 moves its weights to CPU memory and drops the KV cache, level 2 drops both, the
policy sent after the update replacing the weights. `wake` brings back the weights first, then the cache.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import torch

from onpolicy.config import GenerationConfig
from onpolicy.devices import engine_dtype
from onpolicy.errors import OnpolicyError
from onpolicy.generation.placement import EnginePlace, engine_arguments
from onpolicy.generation.sampling import GroupSampling
from onpolicy.generation.serving import ADAPTER_NAME
from onpolicy.interfaces import PhaseProgress
from onpolicy.run.progress import engine_bar
from onpolicy.types import Sample


def in_process_engine_environment() -> None:
    """What vLLM reads from the environment when an engine starts: its engine core in this process, no usage
    statistics (see the module docstring). A value the user set stays."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


class VLLMGenerator(GroupSampling):
    """Samples `num_samples` responses per prompt with a vLLM engine that lives for the whole job."""

    def __init__(
        self, model_path: str, tokenizer: Any, config: GenerationConfig, place: EnginePlace | None = None
    ) -> None:
        """`place`: the engine's arguments and sleep level, as the job's layout planned them (`placement`); None:
        this machine's defaults for `config`, awake throughout."""
        in_process_engine_environment()
        from vllm import LLM

        if place is None:
            cuda = torch.cuda.is_available()
            place = EnginePlace((), engine_arguments(config, engine_dtype(config.dtype), cuda, colocated=True), 0)
        self.config = config
        self.tokenizer = tokenizer
        self.sleep_level = place.sleep_level
        self._asleep: list[str] = []  # what sleeps, in the order `wake` brings it back
        self._weights_dropped = False  # slept at level 2, and no weights loaded since
        self.adapter: Any = None  # the LoRARequest of the adapter served, once one was loaded
        self._adapter_dir: tempfile.TemporaryDirectory[str] | None = None
        try:
            self.llm = LLM(model=model_path, tokenizer=model_path, **place.args)
        except (ValueError, RuntimeError) as exc:
            raise OnpolicyError(f"vLLM could not start on {model_path}: {exc}") from exc
        self.engine_dtype = self.llm.model_config.dtype

    def _sample_ids(
        self, prompts: list[list[int]], params: dict[str, Any], progress: PhaseProgress | None
    ) -> list[list[Sample]]:
        """One request per sample (n=1), each prompt's `n` in a row: vLLM reports a request once all its samples are
        done, so that `progress` advances as each sample finishes. The engine's work is the same: vLLM runs n>1 as
        one child request per sample, and the prefix cache shares a prompt's prefill among them either way (its
        full blocks: 128 tokens each on the CPU build)."""
        from vllm import SamplingParams

        n = params["n"]
        requests = [ids for ids in prompts for _ in range(n)]
        outputs = self._run(requests, SamplingParams(**{**params, "n": 1}), progress)
        samples = [_sample(out.outputs[0]) for out in outputs]
        return [samples[i : i + n] for i in range(0, len(samples), n)]

    def rest(self) -> bool:
        """Put the engine to sleep while the trainer updates on the GPU it shares (when the layout says so); True
        when its weights were dropped (level 2): the policy must be sent before it samples again."""
        if not self.sleep_level or self._asleep:
            return False
        self.llm.sleep(level=self.sleep_level)
        self._asleep = ["weights", "kv_cache"]
        self._weights_dropped = self.sleep_level == 2
        return self._weights_dropped

    def wake(self) -> None:
        """Bring back what `rest` put to sleep: the weights, then the KV cache."""
        for tag in self._asleep:
            self.llm.wake_up(tags=[tag])
        self._asleep = []

    def _run(self, prompts: list[list[int]], params: Any, progress: PhaseProgress | None) -> list[Any]:
        from vllm.inputs import TokensPrompt

        self.wake()
        if self._weights_dropped:
            raise OnpolicyError("the engine slept at level 2 and was sent no weights since: send the policy first")

        requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
        return self.llm.generate(requests, params, use_tqdm=engine_bar(progress), lora_request=self.adapter)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: str | None = None) -> None:
        """Put new policy weights (HF names) into the running engine, in place, and drop cached prefixes that the
        old weights computed. (`version` names them for servers; this engine is in the job's hands alone.)"""
        self.wake()
        weights = ((name, tensor.detach().to(self.engine_dtype)) for name, tensor in named_tensors)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        self._weights_dropped = False

    def load_adapter(self, save_adapter: Callable[[pathlib.Path], None], version: str | None = None) -> None:
        """Serve the LoRA adapter `save_adapter(folder)` writes, in place of the one before (same adapter id,
        reloaded: vLLM's `load_inplace`), and drop cached prefixes the old adapter computed."""
        from vllm.lora.request import LoRARequest

        self.wake()
        if self._adapter_dir is None:
            self._adapter_dir = tempfile.TemporaryDirectory(prefix="onpolicy-adapter-")
        folder = pathlib.Path(self._adapter_dir.name) / "adapter"
        shutil.rmtree(folder, ignore_errors=True)
        save_adapter(folder)
        self.adapter = LoRARequest(ADAPTER_NAME, 1, str(folder), load_inplace=True)
        self.llm.llm_engine.add_lora(self.adapter)  # loaded now, not at the first request
        self.llm.reset_prefix_cache()


def _sample(completion: Any) -> Sample:
    logprobs = tuple(step[token].logprob for step, token in zip(completion.logprobs or (), completion.token_ids))
    return Sample(
        text=completion.text,
        token_ids=tuple(completion.token_ids),
        logprobs=logprobs,
        finish_reason="length" if completion.finish_reason == "length" else "stop",
    )
