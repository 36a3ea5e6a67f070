"""onpolicy against TRL's `OnlineDPOTrainer` on one shipped config: the two runners the comparisons share.

Each runs in its own fresh process (the caller starts it), its clock from before the model loads. A curve point
is the seconds of training so far, evaluations excluded, and the eval metrics asked for. onpolicy evaluates after
each round through its engine; TRL's model is evaluated every `eval_every_s` seconds of training, by onpolicy's
own `Evaluator` (the same prompts, metrics and `eval.reward`) on transformers' greedy `generate`. (The runners
import `benchmarks._common`, which quiets the libraries, when they run: importing this module changes nothing.)
"""

from __future__ import annotations

import pathlib
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_onpolicy(
    config_name: str,
    overrides: Sequence[str],
    metrics: Sequence[str],
    inspect: Callable[[pathlib.Path], None] = lambda run: None,
) -> dict[str, Any]:
    """`onpolicy run configs/<config_name>`: one curve point per round (round 0, the initial policy, first), the
    samples and optimizer steps it took, and every round's record."""
    from benchmarks._common import run_identity_demo

    echoed: dict[int, float] = {}

    def note_round_end(line: str) -> None:
        match = re.match(r"round (\d+)/", line)
        if match:
            echoed[int(match.group(1))] = time.perf_counter()

    start = time.perf_counter()
    records = run_identity_demo(overrides, echo=note_round_end, inspect=inspect, config_name=config_name)
    curve, evaluating = [], 0.0
    for record in records:
        evaluating += record["perf/eval_s"]
        curve.append({"seconds": echoed[record["round"]] - start - evaluating, **{m: record[m] for m in metrics}})
    return {
        "curve": curve,
        "samples": sum(r.get("gen/samples", 0) for r in records),
        "steps": sum(r.get("train/steps", 0) for r in records),
        "records": records,
    }


class GreedyAnswers:
    """`complete` (what onpolicy's Evaluator asks of an engine; greedy, as the benchmarks' eval answers are)
    through transformers' `generate`, on the prompt tokens onpolicy's engine would get."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def complete(
        self, records: Sequence, max_new_tokens: int, progress: Any = None, sampling: Any = None
    ) -> list[str]:
        from onpolicy.tokens import prompt_ids

        ids = [prompt_ids(self.tokenizer, record.messages) for record in records]
        batch = self.tokenizer.pad({"input_ids": ids}, padding_side="left", return_tensors="pt")
        was_training = self.model.training
        self.model.eval()
        output = self.model.generate(
            **batch, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id
        )
        self.model.train(was_training)
        return self.tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def run_trl(
    config_name: str,
    budget_s: float,
    eval_every_s: float,
    metrics: Sequence[str],
    on_sample: Callable[[Any, str], None] = lambda record, text: None,
) -> dict[str, Any]:
    """TRL's OnlineDPOTrainer on the config's prompts and reward (as a reward function), with its learning rate,
    beta, batch size, sampling temperature, top-p and lengths, until `budget_s` seconds of training; its
    reference a frozen copy of the initial policy, its samples transformers' `generate`, 2 per prompt (TRL's
    fixed number). `on_sample(record, text)` sees every sample."""
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from benchmarks._common import embedded_model
    from onpolicy.components import check_inputs
    from onpolicy.config import load_config
    from reward.guarded import guarded_scores

    config = load_config(ROOT / "configs" / config_name, ["wandb.mode=offline"])
    inputs = check_inputs(config)  # the prompts, reward and evaluation (with its eval.reward) an onpolicy job uses
    records, reward, evaluator = inputs.prompts, inputs.reward, inputs.evaluator
    path = embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    answers = GreedyAnswers(model, tokenizer)
    curve: list[dict[str, float]] = []
    paused = 0.0

    def evaluate(seconds: float) -> None:
        nonlocal paused
        began = time.perf_counter()
        results, _ = evaluator.run(answers, initial=not curve)  # the first: the initial policy's answers
        curve.append({"seconds": seconds, **{m: results[m] for m in metrics}})
        paused += time.perf_counter() - began

    def config_reward(prompts: list, completions: list, index: list[int], **_: Any) -> list[float | None]:
        """The config's reward of each completion (None where it failed, as it fails a sample: TRL skips it)."""
        scores = []
        for completion, i in zip(completions, index):
            text = completion[0]["content"]
            on_sample(records[i], text)
            (score,) = guarded_scores(reward, records[i].reward_view(), [text])
            scores.append(score if isinstance(score, float) else None)
        return scores

    class Budget(TrainerCallback):
        """Evaluates every `eval_every_s` seconds of training and stops the trainer at the budget."""

        next_eval = eval_every_s

        def on_step_end(self, args, state, control, **kwargs):
            seconds = time.perf_counter() - start - paused
            if seconds >= self.next_eval or seconds >= budget_s:
                evaluate(seconds)
                self.next_eval += eval_every_s
            control.should_training_stop = seconds >= budget_s

    evaluate(time.perf_counter() - start - paused)  # the initial policy
    train = config.train
    args = OnlineDPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-vs-trl-"),
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler_type,
        beta=[train.beta],
        per_device_train_batch_size=train.batch_size,
        max_new_tokens=config.generation.max_new_tokens,
        max_length=train.max_length,
        temperature=config.generation.temperature,
        top_p=config.generation.top_p,
        max_steps=1_000_000,  # the budget stops it
        seed=config.seed,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
        bf16=train.bf16,  # TRL's default is True: emulated, and many times slower, on a CPU without bf16
        gradient_checkpointing=False,  # TRL's default (on) also turns off the KV cache of its generation
    )
    dataset = Dataset.from_list(
        [{"prompt": [dict(m) for m in record.messages], "index": i} for i, record in enumerate(records)] * 500
    )
    trainer = OnlineDPOTrainer(
        model=model,
        reward_funcs=config_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Budget()],
    )
    trainer.train()
    steps = trainer.state.global_step
    return {"curve": curve, "samples": steps * train.batch_size * 2, "steps": steps}


def time_to(curve: Sequence[dict[str, float]], metric: str, target: float) -> float | None:
    """Seconds until `metric` first reached `target` (None: never in the run)."""
    return next((point["seconds"] for point in curve if point[metric] >= target), None)
