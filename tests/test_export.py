"""`onpolicy export`: a run's complete rounds as TRL-format datasets, read from a run directory written by the
run directory's own writers (so the test follows the format a run writes), and trained on by TRL as it is."""

import json

import pytest

from onpolicy.cli import main
from onpolicy.config import Config
from onpolicy.errors import OnpolicyError
from onpolicy.prompts import load_prompts
from onpolicy.run.export import export, parse_rounds, spans
from onpolicy.run.rundir import RunDirectory
from onpolicy.types import Pair, Sample, SampleGroup, ScoredGroup

SYSTEM = {"role": "system", "content": "Answer in one line."}
PROMPTS = [
    {"id": "who", "prompt": "Who are you?"},
    {"id": "name", "prompt": "What is your name?"},
    {"id": "story", "messages": [{"role": "user", "content": "Tell me a story."}]},
]


def _sample(text, finish_reason="stop"):
    return Sample(text=text, token_ids=(5, 6, 7), logprobs=(-0.5, -0.25, -0.125), finish_reason=finish_reason)


def _round(run, n, records, complete=True):
    """Round `n` as the loop records it: samples, pairs, then (`complete`) its line in rounds.jsonl. "who" gives a
    sampled pair, "name" a corrected one (its chosen side an edit), "story" a tie (no pair), its last sample
    unscored (the reward failed)."""
    who, name, story = records
    scored = [
        ScoredGroup(
            SampleGroup(who, (1, 2), (_sample(f"I am Athene {n}."), _sample("I am a model.", "length"))),
            (1.0, -1.0),
            (None, None),
        ),
        ScoredGroup(
            SampleGroup(name, (1, 3), (_sample("I am SmolLM."), _sample("I am Bob."))), (-1.0, -1.0), (None, None)
        ),
        ScoredGroup(
            SampleGroup(story, (1, 4), (_sample("Once."), _sample("Once."), _sample("\ud800?"))),
            (0.0, 0, None),
            (None, None, "judge_error: no verdict in '\ud800'"),
        ),
    ]
    pairs = [
        Pair("who", who.messages, f"I am Athene {n}.", "I am a model.", 1.0, -1.0),
        Pair("name", name.messages, "I am Athene.", "I am SmolLM.", 1.0, -1.0, edited="chosen"),
    ]
    run.write_samples(n, scored)
    run.write_pairs(n, pairs)
    if complete:
        run.append_round({"round": n, "pairs/kept": len(pairs)})


@pytest.fixture
def run_dir(tmp_path):
    """Two complete rounds (after round 0, the initial evaluation) and round 3 in flight: its files are written
    and a crash tore its line in rounds.jsonl."""
    config = Config.model_validate(
        {
            "prompts": {"items": PROMPTS, "system_prompt": SYSTEM["content"]},
            "reward": [{"name": "contains", "args": {"words": ["Athene"]}}],
            "pairs": {"correction": {"corrector": "replace_name", "args": {"name": "Athene"}}},
        }
    )
    run = RunDirectory.create(tmp_path / "run", config.to_yaml())
    records = load_prompts(config.prompts)
    records = sorted(records, key=lambda r: [p["id"] for p in PROMPTS].index(r.id))
    run.append_round({"round": 0, "eval/identity_rate": 0.0})
    for n in (1, 2):
        _round(run, n, records)
    _round(run, 3, records, complete=False)
    with open(run.path / "rounds.jsonl", "a") as f:
        f.write('{"round": 3, "pairs/ke')
    return run.path


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_pairs_are_trl_conversational_preference_rows_with_rewards_and_provenance(run_dir, tmp_path):
    done = export("pairs", run_dir, tmp_path / "pairs.jsonl")
    assert (done.format, done.rows, done.rounds, done.left_out) == ("jsonl", 4, (1, 2), (3,))
    assert done.describe() == (
        f"4 pairs of round(s) 1-2 -> {tmp_path / 'pairs.jsonl'} (jsonl); round(s) 3 not complete, left out"
    )
    rows = _jsonl(tmp_path / "pairs.jsonl")
    assert rows[0] == {
        "prompt": [SYSTEM, {"role": "user", "content": "Who are you?"}],
        "chosen": [{"role": "assistant", "content": "I am Athene 1."}],
        "rejected": [{"role": "assistant", "content": "I am a model."}],
        "chosen_reward": 1.0,
        "rejected_reward": -1.0,
        "round": 1,
        "prompt_id": "who",
        "edited": "none",
        "corrector": None,
    }
    assert [(r["round"], r["prompt_id"], r["edited"], r["corrector"]) for r in rows] == [
        (1, "who", "none", None),
        (1, "name", "chosen", "replace_name"),
        (2, "who", "none", None),
        (2, "name", "chosen", "replace_name"),
    ]


@pytest.mark.parametrize(
    "rounds, exported, left_out",
    [(None, (1, 2), (3,)), ("1", (1,), ()), ("2-", (2,), (3,)), ("1-2", (1, 2), ()), ("2-5", (2,), (3, 4, 5))],
)
def test_rounds_select_complete_rounds_and_name_those_left_out(run_dir, tmp_path, rounds, exported, left_out):
    done = export("pairs", run_dir, tmp_path / "pairs.jsonl", rounds)
    assert (done.rounds, done.left_out) == (exported, left_out)
    assert sorted({row["round"] for row in _jsonl(tmp_path / "pairs.jsonl")}) == list(exported)


def test_a_torn_or_in_flight_round_is_never_exported_and_the_run_is_only_read(run_dir, tmp_path):
    before = (run_dir / "rounds.jsonl").read_bytes()
    with pytest.raises(OnpolicyError, match=r"no complete round in --rounds 3 \(complete: 1-2\)"):
        export("samples", run_dir, tmp_path / "samples.jsonl", "3")
    export("samples", run_dir, tmp_path / "samples.jsonl")
    assert {row["round"] for row in _jsonl(tmp_path / "samples.jsonl")} == {1, 2}
    assert (run_dir / "rounds.jsonl").read_bytes() == before  # the torn line is the job's to repair


@pytest.mark.parametrize(
    "text, parsed", [("2", (2, 2)), ("2-4", (2, 4)), ("2-", (2, None)), (" 1-1 ", (1, 1)), (None, (1, None))]
)
def test_rounds_are_a_b_a_or_a_dash(text, parsed):
    assert parse_rounds(text) == parsed


@pytest.mark.parametrize("text", ["0", "0-2", "3-2", "x", "1-2-3", "-2", ""])
def test_bad_rounds_are_one_clear_error(text):
    with pytest.raises(OnpolicyError, match="--rounds"):
        parse_rounds(text)


def test_spans_write_rounds_as_ranges():
    assert spans([5, 1, 2, 3, 7, 8]) == "1-3, 5, 7-8"
    assert spans([]) == ""


def test_samples_are_prompt_completion_rows_with_reward_group_and_index(run_dir, tmp_path):
    done = export("samples", run_dir, tmp_path / "samples.jsonl", "1")
    rows = _jsonl(tmp_path / "samples.jsonl")
    assert done.rows == len(rows) == 7
    assert rows[0] == {
        "prompt": [SYSTEM, {"role": "user", "content": "Who are you?"}],
        "completion": [{"role": "assistant", "content": "I am Athene 1."}],
        "reward": 1.0,
        "failure": None,
        "round": 1,
        "prompt_id": "who",
        "group": 0,
        "sample": 0,
        "finish_reason": "stop",
    }
    assert [(r["prompt_id"], r["group"], r["sample"], r["reward"]) for r in rows] == [
        ("who", 0, 0, 1.0),
        ("who", 0, 1, -1.0),
        ("name", 1, 0, -1.0),
        ("name", 1, 1, -1.0),
        ("story", 2, 0, 0.0),
        ("story", 2, 1, 0.0),
        ("story", 2, 2, None),
    ]
    assert rows[1]["finish_reason"] == "length"
    # "story" gave no pair: its prompt comes from the run's prompt source, system prompt and all
    assert rows[4]["prompt"] == [SYSTEM, {"role": "user", "content": "Tell me a story."}]
    # a lone surrogate (which no Parquet or UTF-8 file holds) is written as its escape
    assert rows[6]["completion"][0]["content"] == "\\ud800?"
    assert rows[6]["failure"] == "judge_error: no verdict in '\\ud800'"


def test_samples_without_a_pair_need_the_prompt_source_and_say_so(run_dir, tmp_path):
    run = RunDirectory(run_dir)
    config = run.read_config()
    config["prompts"]["items"] = PROMPTS[:2]  # the source lost "story" since the run
    run.write_text("config.yaml", json.dumps(config))
    with pytest.raises(OnpolicyError, match=r"1 prompt\(s\) gave no pair .*'story'.* no longer holds id\(s\) 'story'"):
        export("samples", run_dir, tmp_path / "samples.jsonl")
    export("pairs", run_dir, tmp_path / "pairs.jsonl")  # pairs carry their prompts


@pytest.mark.parametrize("name, fmt", [("pairs.parquet", None), ("pairs", None), ("pairs-data", "parquet")])
def test_parquet_and_datasets_hold_the_rows_jsonl_holds(run_dir, tmp_path, name, fmt):
    import datasets

    export("pairs", run_dir, tmp_path / "pairs.jsonl")
    done = export("pairs", run_dir, tmp_path / name, fmt=fmt)
    expected = "parquet" if fmt == "parquet" or name.endswith(".parquet") else "datasets"
    assert done.format == expected
    if expected == "parquet":
        loaded = datasets.Dataset.from_parquet(str(tmp_path / name))
    else:
        loaded = datasets.load_from_disk(str(tmp_path / name))
    assert loaded.to_list() == _jsonl(tmp_path / "pairs.jsonl")
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_existing_out_is_replaced_only_with_overwrite_and_only_an_export(run_dir, tmp_path):
    out = tmp_path / "pairs"
    export("pairs", run_dir, out, "1")
    with pytest.raises(OnpolicyError, match="exists; give another OUT, or --overwrite"):
        export("pairs", run_dir, out)
    assert export("pairs", run_dir, out, overwrite=True).rounds == (1, 2)
    (tmp_path / "notes").mkdir()
    with pytest.raises(OnpolicyError, match="is not a saved dataset"):
        export("pairs", run_dir, tmp_path / "notes", overwrite=True)
    with pytest.raises(OnpolicyError, match="part of the run directory"):
        export("pairs", run_dir, run_dir / "rounds.jsonl", overwrite=True)
    assert b'"round": 2' in (run_dir / "rounds.jsonl").read_bytes()


def test_a_complete_round_s_missing_file_or_a_round_without_pairs_is_a_clear_error(run_dir, tmp_path):
    (run_dir / "rounds/0002/pairs.jsonl").unlink()
    with pytest.raises(OnpolicyError, match=r"0002/pairs.jsonl is missing, though round 2 is complete"):
        export("pairs", run_dir, tmp_path / "pairs.jsonl")
    (run_dir / "rounds/0002/pairs.jsonl").write_text("")
    with pytest.raises(OnpolicyError, match=r"round\(s\) 2 hold no pairs"):
        export("pairs", run_dir, tmp_path / "pairs.jsonl", "2")
    (run_dir / "rounds/0001/pairs.jsonl").write_text('{"prompt_id": "who"}\n')
    with pytest.raises(OnpolicyError, match=r"0001/pairs.jsonl holds a line that is not a pair"):
        export("pairs", run_dir, tmp_path / "pairs.jsonl")
    (run_dir / "rounds/0001/samples.jsonl").write_text('{"prompt_id": "who", "sample": 0}\n')
    with pytest.raises(OnpolicyError, match=r"0001/samples.jsonl, row 1: no reward, failure, text, finish_reason"):
        export("samples", run_dir, tmp_path / "samples.jsonl")


def test_the_command_prints_what_it_wrote_and_user_errors_in_one_line(run_dir, tmp_path, capsys):
    out = tmp_path / "pairs.parquet"
    assert main(["export", "pairs", str(run_dir), str(out), "--rounds", "2"]) == 0
    assert capsys.readouterr().out == f"2 pairs of round(s) 2 -> {out} (parquet)\n"
    assert main(["export", "samples", str(tmp_path / "nowhere"), str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == f"onpolicy: error: {tmp_path / 'nowhere'} holds no run (no config.yaml)"
    assert main(["export", "pairs", str(run_dir), str(tmp_path / "p"), "--rounds", "2-1"]) == 2
    assert "--rounds 2-1: rounds count from 1" in capsys.readouterr().err
    assert main(["export", "pairs", str(run_dir), str(tmp_path / "p"), "--format", "csv"]) == 2
    assert "--format csv: give datasets, parquet, jsonl" in capsys.readouterr().err


def test_trl_trains_one_dpo_step_on_an_export_as_it_is(run_dir, tmp_path, tiny_model_path):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    export("pairs", run_dir, tmp_path / "pairs")
    dataset = datasets.load_from_disk(str(tmp_path / "pairs"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = DPOConfig(
        output_dir=str(tmp_path / "trainer"),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(tiny_model_path)
    )
    trainer.train()
    assert trainer.state.global_step == 1
    (logged,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged["loss"] == pytest.approx(0.6931, abs=1e-3)  # the first step is against the policy itself: ln 2
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())
