"""What a round's pairs teach besides what the reward meant: shortcuts, length, duplicates.

DPO learns whatever separates chosen from rejected answers. When one word (or two-word phrase) is in nearly
every chosen answer and almost no rejected one, the update can learn that word instead of the behaviour the
reward describes; when chosen answers are much longer, it learns length. Each round's pairs are measured:

- `pairs/shortcut_gap`: the share of chosen answers holding the most separating word or bigram minus the share
  of rejected ones holding it (either direction: a word only rejected answers carry teaches just as much);
- `pairs/length_ratio`: mean chosen length over mean rejected length, in characters;
- `pairs/duplicates`: pairs identical to an earlier pair of the round (same prompt and both sides);
- `pairs/corrected_share`: pairs with an edited side.

A warning is printed in the round a measure crosses its threshold (not again while it stays beyond it), naming
the word: the identity demo's pairs, whose point is a name, say so once.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from onpolicy.types import Pair

SHORTCUT_SHARE = 0.9  # in at least this share of one side's answers ...
SHORTCUT_OTHER_SHARE = 0.1  # ... and at most this share of the other side's
SHORTCUT_MIN_PAIRS = 8  # fewer pairs say too little to warn about
LENGTH_RATIO_LIMIT = 1.5  # chosen this many times as long as rejected (or the inverse)
DUPLICATE_SHARE_LIMIT = 0.2

_WORD = re.compile(r"\w+")


@dataclasses.dataclass(frozen=True)
class Shortcut:
    ngram: str
    chosen_share: float
    rejected_share: float

    @property
    def gap(self) -> float:
        return abs(self.chosen_share - self.rejected_share)


@dataclasses.dataclass(frozen=True)
class PairDiagnostics:
    metrics: dict[str, float]
    shortcut: Shortcut | None

    def warnings(self, previous: Mapping[str, float] | None) -> list[str]:
        """The measures that cross their threshold this round (`previous`: the last round's metrics)."""
        before = previous or {}
        found = []
        if self.is_shortcut(self.metrics) and not self.is_shortcut(before) and self.shortcut is not None:
            side, other = ("chosen", "rejected") if self.shortcut.chosen_share > self.shortcut.rejected_share else (
                "rejected", "chosen")  # fmt: skip
            shares = {"chosen": self.shortcut.chosen_share, "rejected": self.shortcut.rejected_share}
            found.append(
                f"pairs/shortcut: {self.shortcut.ngram!r} is in {shares[side]:.0%} of {side} answers and "
                f"{shares[other]:.0%} of {other} ones: DPO may learn that word rather than what the reward means "
                "(intended when the reward asks for it)"
            )
        if _long(self.metrics) and not _long(before):
            found.append(
                f"pairs/length_ratio: chosen answers are {self.metrics['pairs/length_ratio']:.2f}x as long as "
                "rejected ones: DPO may learn length (a length penalty in the reward evens it out)"
            )
        if _duplicated(self.metrics) and not _duplicated(before):
            found.append(
                f"pairs/duplicates: {self.metrics['pairs/duplicates']:.0f} pairs repeat another pair of the round "
                "(a prompt listed several times?)"
            )
        return found

    @staticmethod
    def is_shortcut(metrics: Mapping[str, float]) -> bool:
        return metrics.get("pairs/shortcut_flagged", 0.0) > 0


def diagnose_pairs(pairs: Sequence[Pair]) -> PairDiagnostics:
    """The measures of one round's pairs (see the module's docstring)."""
    if not pairs:
        return PairDiagnostics({}, None)
    shortcut = find_shortcut([p.chosen for p in pairs], [p.rejected for p in pairs])
    flagged = (
        shortcut is not None
        and len(pairs) >= SHORTCUT_MIN_PAIRS
        and max(shortcut.chosen_share, shortcut.rejected_share) >= SHORTCUT_SHARE
        and min(shortcut.chosen_share, shortcut.rejected_share) <= SHORTCUT_OTHER_SHARE
    )
    rejected_chars = sum(len(p.rejected) for p in pairs)
    seen = Counter((p.prompt_id, p.chosen, p.rejected) for p in pairs)
    metrics = {
        "pairs/shortcut_gap": shortcut.gap if shortcut else 0.0,
        "pairs/shortcut_flagged": float(flagged),
        "pairs/length_ratio": sum(len(p.chosen) for p in pairs) / rejected_chars if rejected_chars else 0.0,
        "pairs/duplicates": float(sum(n - 1 for n in seen.values())),
        "pairs/duplicate_share": sum(n - 1 for n in seen.values()) / len(pairs),
        "pairs/corrected_share": sum(p.corrected for p in pairs) / len(pairs),
    }
    return PairDiagnostics(metrics, shortcut)


def find_shortcut(chosen: Sequence[str], rejected: Sequence[str]) -> Shortcut | None:
    """The word or bigram (lower case) whose share of answers differs most between the two sides."""
    chosen_counts, rejected_counts = _document_counts(chosen), _document_counts(rejected)
    candidates = [
        Shortcut(ngram, chosen_counts[ngram] / len(chosen), rejected_counts[ngram] / len(rejected))
        for ngram in chosen_counts.keys() | rejected_counts.keys()
    ]
    # the widest gap; among equals a single word before a bigram, the longest word (the telling one: "athene"
    # rather than the "so" that always follows it), then the first in alphabetical order
    return min(candidates, key=lambda s: (-round(s.gap, 9), len(s.ngram.split()), -len(s.ngram), s.ngram), default=None)


def _document_counts(texts: Iterable[str]) -> Counter[str]:
    """In how many of `texts` each word and bigram appears."""
    counts: Counter[str] = Counter()
    for text in texts:
        words = _WORD.findall(text.lower())
        counts.update(set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])})
    return counts


def _long(metrics: Mapping[str, float]) -> bool:
    ratio = metrics.get("pairs/length_ratio", 1.0)
    return ratio > LENGTH_RATIO_LIMIT or 0 < ratio < 1 / LENGTH_RATIO_LIMIT


def _duplicated(metrics: Mapping[str, float]) -> bool:
    return metrics.get("pairs/duplicate_share", 0.0) > DUPLICATE_SHARE_LIMIT
