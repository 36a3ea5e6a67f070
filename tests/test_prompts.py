"""Prompt sources: JSONL with metadata, Parquet, text, in-config lists; per-round slices; clear errors."""

import json

import pytest

from onpolicy.config import PromptsConfig
from onpolicy.errors import OnpolicyError
from onpolicy.prompts import load_prompts, prompts_for_round


def test_jsonl_records_keep_their_metadata_and_id(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"id": "q1", "prompt": "2+2?", "answer": "4", "category": "math"}, {"prompt": "Who are you?"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    records = load_prompts(PromptsConfig(path=str(path), shuffle=False))
    assert [r.id for r in records] == ["q1", "1"]
    assert records[0].messages == ({"role": "user", "content": "2+2?"},)
    assert records[0].metadata == {"answer": "4", "category": "math"}
    assert records[0].reward_view()["answer"] == "4" and records[0].reward_view()["prompt"] == "2+2?"


def test_chat_messages_and_a_system_prompt(tmp_path):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Name?"},
    ]
    config = PromptsConfig(items=[{"messages": messages}, "Plain"], system_prompt="Be brief.", shuffle=False)
    records = load_prompts(config)
    assert records[0].messages[0] == {"role": "system", "content": "Be brief."}
    assert records[0].prompt == "Name?" and len(records[0].messages) == 4
    assert records[1].messages == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Plain"})


def test_parquet_and_text_files_with_a_custom_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["a?", "b?"], "level": [1, 2]}), tmp_path / "p.parquet")
    records = load_prompts(PromptsConfig(path=str(tmp_path / "p.parquet"), field="question", shuffle=False))
    assert [r.prompt for r in records] == ["a?", "b?"] and records[1].metadata == {"level": 2}
    (tmp_path / "p.txt").write_text("first\n\n  second  \n")
    assert [r.prompt for r in load_prompts(PromptsConfig(path=str(tmp_path / "p.txt"), shuffle=False))] == [
        "first",
        "second",
    ]


def test_metadata_takes_its_json_form_and_what_json_cannot_hold_is_refused_before_anything_runs(tmp_path):
    import datetime
    import decimal

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from onpolicy.jsonable import NotJsonable, jsonable

    when = datetime.datetime(2026, 3, 4, 5, 6, 7)
    table = {"prompt": ["a?"], "asked": [when], "day": [when.date()], "price": [decimal.Decimal("1.25")],
             "scores": [[1, 2]], "tags": [{"x": 1}]}  # fmt: skip
    pq.write_table(pa.table(table), tmp_path / "p.parquet")
    (record,) = load_prompts(PromptsConfig(path=str(tmp_path / "p.parquet")))
    assert record.metadata == {
        "asked": "2026-03-04T05:06:07", "day": "2026-03-04", "price": 1.25, "scores": [1, 2], "tags": {"x": 1}
    }  # fmt: skip
    numbers = {"n": np.int64(3), "v": np.arange(2), 4: (np.float32(0.5),)}
    assert jsonable(numbers, "x") == {"n": 3, "v": [0, 1], "4": [0.5]}
    pq.write_table(pa.table({"prompt": ["a?", "b?"], "image": [b"\x89PNG", b"GIF8"]}), tmp_path / "b.parquet")
    with pytest.raises(NotJsonable, match=r"b.parquet, prompt 1, field 'image' is bytes b'\\x89PNG', which the run"):
        load_prompts(PromptsConfig(path=str(tmp_path / "b.parquet")))


def test_shuffle_is_seeded():
    config = PromptsConfig(items=[str(i) for i in range(20)])
    first, again, other = load_prompts(config, seed=1), load_prompts(config, seed=1), load_prompts(config, seed=2)
    assert [r.prompt for r in first] == [r.prompt for r in again] != [r.prompt for r in other]
    assert sorted(r.prompt for r in first) == sorted(str(i) for i in range(20))


def test_per_round_takes_the_next_prompts_and_wraps_around():
    records = load_prompts(PromptsConfig(items=list("abcde"), shuffle=False))
    assert [r.prompt for r in prompts_for_round(records, 0, 2)] == ["a", "b"]
    assert [r.prompt for r in prompts_for_round(records, 2, 2)] == ["e", "a"]
    assert [r.prompt for r in prompts_for_round(records, 3, None)] == list("abcde")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.jsonl", '{"prompt": "ok"}\n{bad json}\n', r"p.jsonl, line 2: not valid JSON"),
        ("p.jsonl", '{"text": "no prompt field"}\n', r"prompt 1: no prompt text.*fields present: text.*prompts.field"),
        ("p.jsonl", '{"messages": [{"role": "assistant", "content": "x"}]}\n', "last message must be the user's turn"),
        ("p.jsonl", "[1, 2]\n", "expected a string or a record"),
        ("p.csv", "a,b\n", "unknown format '.csv'"),
        ("p.txt", "\n\n", "holds no prompts"),
        ("p.txt", b"caf\xe9\n", r"p.txt is not UTF-8 text \(byte 3: b'\\xe9\\n'\); save it as UTF-8"),
        ("p.parquet", b"PAR1 not really parquet PAR1", r"p.parquet is not a readable Parquet file: "),
        ("p.jsonl", '{"prompt": "half \\ud800 pair"}\n', r"prompt 1, field 'prompt' holds '\\ud800' at character 5, "),
        # what reaches samples.jsonl and pairs.jsonl besides the prompt text: ids, metadata names and values, turns
        ("p.jsonl", '{"id": "q\\ud800", "prompt": "x"}\n', r"prompt 1 \(id 'q\\ud800'\), field 'id' holds '\\ud800'"),
        ("p.jsonl", '{"prompt": "x", "tags": ["\\udfff"]}\n', r"prompt 1, field 'tags'\[0\] holds '\\udfff' at char"),
        ("p.jsonl", '{"prompt": "x", "n\\ud800": 1}\n', r"prompt 1, a field's name holds '\\ud800' at character 1"),
        ("p.jsonl", '{"prompt": "x", "m": {"k\\ud800": 1}}\n', r"prompt 1, field 'm', key 'k\\ud800' holds '\\ud800'"),
        ("p.jsonl", '{"messages": [{"role": "user\\ud800", "content": "x"}]}\n', r"message 1.role holds '\\ud800'"),
        ("p.jsonl", '{"messages": [{"role": "user", "content": "x", "name": "\\ud800"}]}\n', r"message 1.name holds"),
        # turns that are not {role, content} with text in both
        ("p.jsonl", '{"messages": ["hi", "there"]}\n', r"prompt 1, message 1: 'messages' must be a list of \{role, "),
        ("p.jsonl", '{"messages": [{"role": "user"}]}\n', r"message 1: a turn's 'content' must be text \(got none\)"),
        ("p.jsonl", '{"messages": [{"content": "x"}]}\n', r"message 1: a turn's 'role' must be text \(got none\)"),
        ("p.jsonl", '{"messages": [{"role": "user", "content": ["x"]}]}\n', r"'content' must be text \(got list\)"),
        ("p.jsonl", '{"messages": [{"role": 1, "content": "x"}]}\n', r"a turn's 'role' must be text \(got int\)"),
        ("p.jsonl", '{"messages": []}\n', r"prompt 1: 'messages' is empty"),
        # nesting no parser or walker survives
        ("p.jsonl", "[" * 5000 + "]" * 5000 + "\n", r"p.jsonl, line 1: nested deeper than 100 levels"),
        ("p.jsonl", '{"prompt": "x", "m": ' + "[" * 150 + "]" * 150 + "}\n", r"line 1: nested deeper than 100"),
    ],
)
def test_bad_prompt_files_say_where(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(OnpolicyError, match=message):
        load_prompts(PromptsConfig(path=str(path)))


def test_an_empty_prompt_list_is_refused(tmp_path):
    from onpolicy.config import load_config
    from onpolicy.errors import ConfigError

    config = tmp_path / "run.yaml"
    config.write_text("prompts: {items: []}\nreward: [{name: length, args: {target: 3}}]\n")
    with pytest.raises(ConfigError, match="prompts.items is empty"):
        load_config(config)


def test_a_dataset_saved_by_datasets_is_a_prompt_source_with_the_same_field_mapping(tmp_path):
    import datasets

    rows = {"question": ["Who are you?", "What is 2+2?"], "id": ["q1", "q2"], "answer": ["Athene", "4"]}
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows),
            "test": datasets.Dataset.from_dict({k: v[:1] for k, v in rows.items()}),
        }
    ).save_to_disk(str(tmp_path / "qa"))
    records = load_prompts(PromptsConfig(path=str(tmp_path / "qa"), field="question", shuffle=False))
    assert [(r.id, r.prompt, r.metadata) for r in records] == [
        ("q1", "Who are you?", {"answer": "Athene"}),
        ("q2", "What is 2+2?", {"answer": "4"}),
    ]
    assert len(load_prompts(PromptsConfig(path=str(tmp_path / "qa"), field="question", split="test"))) == 1
    with pytest.raises(OnpolicyError, match=r"has no split 'validation' \(it has train, test\)"):
        load_prompts(PromptsConfig(path=str(tmp_path / "qa"), field="question", split="validation"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OnpolicyError, match="is not a dataset saved by datasets' save_to_disk"):
        load_prompts(PromptsConfig(path=str(tmp_path / "empty")))


def test_a_prompt_id_no_run_file_can_hold_stops_the_job_before_round_1_in_one_line(tmp_path, capsys):
    """It used to pass every check and stop round 1 with UnicodeEncodeError writing samples.jsonl, after the
    generation, scoring, training and sync, and again on every resume."""
    from onpolicy.cli import main

    (tmp_path / "p.jsonl").write_text('{"id": "q1", "prompt": "a"}\n{"id": "q\\ud800", "prompt": "b"}\n')
    (tmp_path / "run.yaml").write_text("prompts: {path: p.jsonl}\nreward: [{name: length, args: {target: 3}}]\n")
    assert main(["config", str(tmp_path / "run.yaml")]) == 2  # what `onpolicy run` checks before any model loads
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "p.jsonl, prompt 2 (id 'q\\ud800'), field 'id' holds '\\ud800'" in err
