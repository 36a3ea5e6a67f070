"""`onpolicy_gloo`: a vLLM weight-transfer engine over torch's gloo backend, for servers on CPUs.

vLLM's own transfer engines (NCCL, CUDA IPC, ...) need GPUs on both sides. This one is the NCCL engine's twin on
gloo: the job's process broadcasts each tensor from rank 0 of a stateless process group, and every worker of the
server receives it and loads it through vLLM's layer-wise reload, as the NCCL engine does. It lives in vLLM's
engine registry of every vLLM process (`register`, vLLM's `vllm.general_plugins` entry point, declared in
pyproject.toml); a server selects it with `--weight-transfer-config '{"backend": "onpolicy_gloo"}'`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime

import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

BACKEND = "onpolicy_gloo"


def register() -> None:
    """vLLM's plugin hook: add this engine to the registry of the process (once; the class is imported only when a
    server asks for it)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    with contextlib.suppress(ValueError):  # registered already: vLLM refuses a name twice
        WeightTransferEngineFactory.register_engine(BACKEND, __name__, "GlooWeightTransferEngine")


@dataclasses.dataclass
class GlooInitInfo(WeightTransferInitInfo):
    master_address: str
    master_port: int
    rank_offset: int  # the rank of this server's first worker in the job's group
    world_size: int
    timeout_s: float = 900.0


@dataclasses.dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """The worker side: joins the job's group, receives each update's tensors in order and loads them."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo

    def __init__(self, config, vllm_config, device, model) -> None:  # noqa: ANN001 (vLLM's signature)
        super().__init__(config, vllm_config, device, model)
        self.group = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        from vllm.distributed.utils import stateless_init_torch_distributed_process_group

        parallel = self.parallel_config
        rank = parallel.data_parallel_index * parallel.world_size + parallel.rank + init_info.rank_offset
        self.group = stateless_init_torch_distributed_process_group(
            init_info.master_address, init_info.master_port, rank, init_info.world_size, "gloo",
            timeout=datetime.timedelta(seconds=init_info.timeout_s),
        )  # fmt: skip

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict) -> None:
        # the base class ends with torch.accelerator.synchronize(), which raises where there is no accelerator;
        # gloo's broadcast has completed when `wait` returns
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("onpolicy_gloo weight transfer not initialized: call init_weight_transfer_engine first")
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        with disable_mtp_completeness_check():
            for name, dtype_name, shape in zip(update_info.names, update_info.dtype_names, update_info.shapes):
                weight = torch.empty(shape, dtype=getattr(torch, dtype_name))
                self.group.broadcast(weight, 0).wait()
                self.model.load_weights([(name, weight)])

    def shutdown(self) -> None:
        group, self.group = self.group, None
        if group is not None:
            group.shutdown()
