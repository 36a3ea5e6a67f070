"""The KL from the policy to other states of it (the initial policy, the last round's reference), estimated on the
policy's own samples with the trainer's log-probs, so that a state equal to the policy gives exactly 0."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from onpolicy.train.snapshots import Snapshot
from onpolicy.train.trl_compat import selective_log_softmax
from onpolicy.types import SampleGroup


@torch.no_grad()
def kl_from_samples(
    policy: torch.nn.Module, pad_id: int, groups: Sequence[SampleGroup], against: Mapping[str, Snapshot | None]
) -> dict[str, float]:
    """eval/kl_<name> and eval/kl_<name>_per_token for each snapshot of `against` (None: left out): the mean over
    the policy's samples (`groups`) of sum_t [log pi(y_t) - log q(y_t)], an unbiased estimate of KL(pi || q)."""
    sequences = [(group.prompt_token_ids, s.token_ids) for group in groups for s in group.samples if s.token_ids]
    if not sequences:
        return {}
    tokens = sum(len(completion) for _, completion in sequences)
    mine = sequence_log_probs(policy, sequences, pad_id)
    results = {}
    for name, snapshot in against.items():
        if snapshot is None:
            continue
        with snapshot.computing(policy) as model:
            gaps = [a - b for a, b in zip(mine, sequence_log_probs(model, sequences, pad_id))]
        results[f"eval/kl_{name}"] = sum(gaps) / len(gaps)
        results[f"eval/kl_{name}_per_token"] = sum(gaps) / tokens
    return results


@torch.no_grad()
def sequence_log_probs(
    model: torch.nn.Module,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    batch_size: int = 8,
) -> list[float]:
    """log p(completion | prompt) under `model` for each (prompt ids, completion ids), in batches padded on the
    right (token log-probs by TRL's `selective_log_softmax`, which spares a vocabulary-wide log-softmax tensor)."""
    device = next(model.parameters()).device
    sums = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        rows = [list(prompt) + list(completion) for prompt, completion in chunk]
        width = max(map(len, rows))
        ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], device=device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        token_logps = selective_log_softmax(logits, ids[:, 1:])
        for row, (prompt, completion) in enumerate(chunk):
            sums.append(token_logps[row, len(prompt) - 1 : len(prompt) - 1 + len(completion)].sum().item())
    return sums
