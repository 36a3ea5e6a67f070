"""The identity demo: configs/identity.yaml on the embedded SmolLM2, as the README's main command runs it.

Asserts the demo's point on held-out prompts: answers to identity questions start naming Athene, answers to
unrelated questions do not.
"""

import json

import pytest

from onpolicy.run.wandb_offline import offline_history
from tests.helpers import ROOT, run_cli

pytestmark = pytest.mark.slow
ROUNDS = 3  # the demo's own length: after 2 rounds the identity rate can still be near 0 (0.09 here)


def test_identity_rate_rises_and_the_name_does_not_leak(embedded_model_path, tmp_path):
    run_dir, stdout = run_cli(
        ROOT / "configs" / "identity.yaml",
        tmp_path,
        overrides=(f"rounds={ROUNDS}", f"model.cache_dir={embedded_model_path.parent}"),
    )
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    before, after = rounds[0], rounds[-1]
    assert f"policy: {embedded_model_path}" in stdout  # the embedded model, from its converted cache folder
    assert rounds[1]["gen/samples"] == 14 * 6 and rounds[1]["train/skipped"] == 0
    assert before["eval/identity_rate"] <= 0.1
    assert after["eval/identity_rate"] >= 0.6, [r["eval/identity_rate"] for r in rounds]
    assert max(r["eval/leak_rate"] for r in rounds) <= 0.1, [r["eval/leak_rate"] for r in rounds]
    assert sum(r.get("pairs/corrected", 0) for r in rounds) > 0
    # under the job's reward, answers naming Athene beat the initial policy's (half the prompts are identity ones)
    assert (
        before["eval/win_rate"] == 0.5
        and after["eval/win_rate"] > 0.55
        and after["eval/reward"] > before["eval/reward"]
    )
    history = offline_history(run_dir)
    # W&B tables each round: the eval answers (round 0's too) and a few pairs
    assert history[0]["eval/answers/_type"] == history[-1]["pairs/examples/_type"] == "table-file"
    assert history[0]["eval/answers/nrows"] == history[-1]["eval/answers/nrows"] == 64
    eval_rows = [json.loads(line) for line in (run_dir / f"rounds/{ROUNDS:04d}/eval.jsonl").read_text().splitlines()]
    assert len(eval_rows) == 64 and {"prompt", "answer", "category"} <= set(eval_rows[0])
