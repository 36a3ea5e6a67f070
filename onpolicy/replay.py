"""Replay: pairs of the last `pairs.replay.rounds` complete rounds, mixed into a round's update.

Online DPO trains each round on the pairs the round's own samples gave, and forgets them. Replaying a share of
earlier rounds' pairs keeps what the policy learnt from being unlearnt by rounds whose prompts or pairs pull
elsewhere, at the cost of pairs that are no longer the current policy's samples. A replayed pair trains exactly
as it did (its sampled tokens), against the round's own reference: its sampling log-probs, which were the
reference's in the round that drew them, are dropped, and the trainer computes the reference's afresh.

The pairs are read back from the run directory (each complete round's pairs.jsonl, `RunDirectory.read_pairs`), and drawn with a seed of
the round's own, so a resumed run replays what it would have without the interruption.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

from onpolicy.config.sections import ReplayConfig
from onpolicy.types import Pair


def replayed_pairs(
    read_pairs: Callable[[int], Sequence[Pair]], round_number: int, config: ReplayConfig, fresh: int, seed: int
) -> list[Pair]:
    """`config.share` x `fresh` pairs (rounded) drawn without repeats from rounds `round_number - config.rounds` ..
    `round_number - 1` (`read_pairs(round)`: a round's pairs; fewer where those hold fewer), ready to train against
    this round's reference."""
    wanted = round(config.share * fresh)
    if not config.rounds or not wanted:
        return []
    earlier = range(max(1, round_number - config.rounds), round_number)
    candidates = [pair for past in earlier for pair in read_pairs(past)]
    chosen = random.Random(f"replay:{seed}:{round_number}").sample(candidates, min(wanted, len(candidates)))
    return [_against_current_reference(pair) for pair in chosen]


def _against_current_reference(pair: Pair) -> Pair:
    if pair.tokens is None:
        return pair
    return dataclasses.replace(pair, tokens=dataclasses.replace(pair.tokens, chosen_logp=None, rejected_logp=None))
