"""Two rounds of DPO updates on fixed pairs, through the parts a job of several training processes uses
(`onpolicy.train.distributed`): run as one process (`python`) or as several (`torchrun`), it writes the losses, the
device the policy trained on, the KL estimate (with `eval.kl_samples`), the reference's kind and the final weights
of the main process, as a sync sends them, to OUT (.json and .safetensors), for
test_distributed (processes) and test_cuda (devices) to compare.

    python tests/distributed_update.py CONFIG.yaml OUT
    torchrun --standalone --nproc_per_node 2 tests/distributed_update.py CONFIG.yaml OUT
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from onpolicy.components import build_updater, join_team, storage_kind  # noqa: E402
from onpolicy.config import load_config  # noqa: E402
from onpolicy.train import distributed  # noqa: E402
from tests.helpers import PAIRS  # noqa: E402
from tests.test_update import _sample_groups  # noqa: E402

# 8 pairs: two full batches of 4 (a last, short batch would be padded differently by several processes)
EIGHT_PAIRS = [*PAIRS, *(dataclasses.replace(p, prompt_id=f"{p.prompt_id}b", rejected="No.") for p in PAIRS)]


def main(config_path: str, out: str) -> None:
    config = load_config(config_path)
    team = join_team(config)
    start = distributed.TrainerStart(
        initial_path=config.model.path, checkpoint=None, tokenizer_path=config.model.path,
        storage=storage_kind(config, team), reference=None, engine_dtype=None,
    )  # fmt: skip
    if team is not None and not team.is_main:
        team.follow_main(lambda: False)
        team.leave()
        return
    updater = build_updater(config, start, team.size if team else 1)
    tokenizer = updater.tokenizer
    reference = type(updater.reference).__name__
    if team is not None:
        team.broadcast(start)
        updater = distributed.MirroredUpdater(updater, team, pathlib.Path(out).parent / "trainer-data")
    losses = []
    for n in (1, 2):
        updater.start_round(n)
        result = updater.update(EIGHT_PAIRS, n)
        losses.append(result.metrics["train/loss"])
    # the KL estimate, where the config asks for it: the policy against the initial one and the reference
    kl = updater.kl_from_samples(_sample_groups(tokenizer)) if config.eval.kl_samples else {}
    received = _Received()
    updater.send_policy(received, "2")  # as a job syncs its generator: gathered by every process where sharded
    if team is not None:
        updater.close()
        team.leave()
    summary = {"losses": losses, "device": received.device, "kl": kl, "reference": reference}
    pathlib.Path(f"{out}.json").write_text(json.dumps(summary))
    save_file(received.weights, f"{out}.safetensors")


class _Received:
    """Where a job's generator would be: keeps the weights a sync sends it, and the device they trained on."""

    def load_weights(self, named, version=None):
        named = list(named)
        self.device = named[0][1].device.type
        self.weights = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in named}


if __name__ == "__main__":
    main(*sys.argv[1:])
