"""The reference kinds, without a model: which kind each ref.refresh names, what each says about itself, and where
a resumed run restores it from (hand-worked cases)."""

import pathlib

import pytest

from onpolicy.config import RefConfig
from onpolicy.run.rundir import RunDirectory
from onpolicy.train.reference import (
    FrozenReference,
    MixedReference,
    RoundStartReference,
    reference_kind,
    restore_source,
)

RUN = RunDirectory(pathlib.Path("/runs/x"))
INITIAL = "/models/initial"


def _checkpoint(n: int, *rest: str) -> str:
    return str(RUN.checkpoint(n).joinpath(*rest))


@pytest.mark.parametrize(
    ("ref", "kind"),
    [
        (RefConfig(), RoundStartReference),
        (RefConfig(refresh="every", every=1), RoundStartReference),  # every round, said another way
        (RefConfig(refresh="every", every=3), FrozenReference),
        (RefConfig(refresh="never"), FrozenReference),
        (RefConfig(refresh="mix", mix=0.5), MixedReference),
    ],
)
def test_each_refresh_names_one_kind(ref, kind):
    assert reference_kind(ref) is kind


def test_only_the_round_start_policy_lets_engine_log_probs_in_and_only_a_mix_saves_itself():
    assert [k.sampling_policy for k in (RoundStartReference, FrozenReference, MixedReference)] == [True, False, False]
    assert [k.checkpoint_folder for k in (RoundStartReference, FrozenReference, MixedReference)] == [
        None,
        None,
        "reference",
    ]


@pytest.mark.parametrize(
    ("ref", "last_complete", "reference_from", "expected"),
    [
        (RefConfig(), 3, 3, None),  # the round's starting policy: nothing to restore
        (RefConfig(refresh="never"), 0, 0, None),  # nothing complete: round 1 takes its own
        (RefConfig(refresh="never"), 3, 0, (INITIAL, 0)),  # the initial model, from its folder
        (RefConfig(refresh="every", every=2), 3, 2, (_checkpoint(2), 2)),  # round 4's: the policy after round 2
        (RefConfig(refresh="every", every=2), 2, 2, None),  # round 3 takes a new one
        (RefConfig(refresh="mix"), 0, 0, None),
        (RefConfig(refresh="mix"), 3, 3, (_checkpoint(3, "reference"), 2)),  # the mix round 3 trained against
    ],
)
def test_a_resumed_run_restores_the_reference_from_where_it_was_saved(ref, last_complete, reference_from, expected):
    assert restore_source(ref, RUN, last_complete, reference_from, INITIAL) == expected
