"""Replay (`pairs.replay`): which earlier pairs a round's update gets, read back from the run directory."""

import pytest

from onpolicy.config.sections import ReplayConfig
from onpolicy.errors import OnpolicyError
from onpolicy.replay import replayed_pairs
from onpolicy.run.rundir import RunDirectory
from onpolicy.types import Pair, PairTokens


def _pair(round_number: int, i: int, edited: bool = False) -> Pair:
    tokens = PairTokens(
        prompt=(1, 2),
        chosen=None if edited else (3, 4, 2),
        rejected=(5, 2),
        chosen_logp=None if edited else -1.5,
        rejected_logp=-0.5,
        chosen_end=(2,),
        rejected_end=(2,),
    )
    return Pair(
        prompt_id=f"r{round_number}-{i}",
        messages=({"role": "user", "content": "Who are you?"},),
        chosen="I am Athene.",
        rejected="I am Bob.",
        chosen_reward=1.0,
        rejected_reward=0.0,
        edited="chosen" if edited else "none",
        tokens=tokens,
    )


@pytest.fixture
def run(tmp_path):
    run = RunDirectory(tmp_path)
    for n in (1, 2, 3):
        run.write_pairs(n, [_pair(n, i, edited=i == 0) for i in range(4)])
    return run


def test_a_pair_reads_back_as_it_was_written(run):
    assert run.read_pairs(2) == [_pair(2, i, edited=i == 0) for i in range(4)]
    assert run.read_pairs(9) == []


def test_a_round_replays_a_share_of_the_last_rounds_pairs_against_its_own_reference(run):
    replayed = replayed_pairs(run.read_pairs, 4, ReplayConfig(rounds=2, share=0.75), fresh=4, seed=0)
    assert len(replayed) == 3 and len({p.prompt_id for p in replayed}) == 3  # no pair twice
    assert all(p.prompt_id.startswith(("r2-", "r3-")) for p in replayed)  # round 1 is too old
    originals = {p.prompt_id: p for n in (2, 3) for p in run.read_pairs(n)}
    for pair in replayed:
        original = originals[pair.prompt_id]
        # the same tokens, trained exactly as sampled; the sampling policy's log-probs are no reference now
        assert pair.tokens.chosen == original.tokens.chosen and pair.tokens.rejected == original.tokens.rejected
        assert pair.tokens.chosen_logp is None and pair.tokens.rejected_logp is None
        assert (pair.chosen, pair.rejected, pair.edited) == (original.chosen, original.rejected, original.edited)


def test_the_draw_is_the_round_s_own_so_a_resumed_run_replays_the_same_pairs(run):
    config = ReplayConfig(rounds=3, share=0.5)
    draw = [p.prompt_id for p in replayed_pairs(run.read_pairs, 4, config, fresh=6, seed=7)]
    assert draw == [p.prompt_id for p in replayed_pairs(run.read_pairs, 4, config, fresh=6, seed=7)]
    assert draw != [p.prompt_id for p in replayed_pairs(run.read_pairs, 4, config, fresh=6, seed=8)]


def test_nothing_is_replayed_when_off_before_round_two_or_without_pairs_of_the_round(run):
    assert replayed_pairs(run.read_pairs, 4, ReplayConfig(rounds=0), fresh=4, seed=0) == []
    assert replayed_pairs(run.read_pairs, 1, ReplayConfig(rounds=2), fresh=4, seed=0) == []
    assert replayed_pairs(run.read_pairs, 4, ReplayConfig(rounds=2), fresh=0, seed=0) == []
    # more asked for than the rounds hold: all of them, once each
    assert len(replayed_pairs(run.read_pairs, 3, ReplayConfig(rounds=1, share=4.0), fresh=4, seed=0)) == 4


def test_a_damaged_pairs_file_stops_with_a_message_naming_it(run):
    (run.path / "rounds/0003/pairs.jsonl").write_text('{"prompt_id": "x"}\n')
    with pytest.raises(OnpolicyError, match=r"rounds/0003/pairs.jsonl holds a line that is not a pair"):
        replayed_pairs(run.read_pairs, 4, ReplayConfig(rounds=1), fresh=4, seed=0)
