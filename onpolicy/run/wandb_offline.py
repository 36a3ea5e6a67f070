"""Reads back what W&B wrote in offline mode: the history rows of a run's `.wandb` transaction logs.

Resuming needs it: W&B cannot resume an offline run in place (each process writes a new segment under the same
run id), and a process that is killed loses what W&B had not yet flushed to its segment. So on resume, the
steps the earlier segments really hold are read back, and the complete rounds missing there are logged again.
W&B ships no Python reader for these files (its core is a Go binary). The format is a LevelDB-style record log
(a 7-byte ':W&B' header, then 32 KiB blocks of checksummed chunks), each record a `wandb_internal_pb2.Record`;
a segment cut short ends at its last whole record.
"""

from __future__ import annotations

import json
import pathlib
import struct

_BLOCK = 32 * 1024
_HEADER = 7  # ident ":W&B" (4), magic (2), version (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: pathlib.Path):
    data = path.read_bytes()
    if data[:4] != b":W&B":
        return
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < 7:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:
            pos += room - 7  # zero padding up to the next block
        else:
            break


def offline_history(run_dir: pathlib.Path, run_id: str | None = None) -> list[dict]:
    """The history rows (`_step` plus logged keys) of the offline W&B run under `run_dir`: one segment, or
    several sharing one run id when the job was resumed (W&B writes a segment per process), in order."""
    from wandb.proto import wandb_internal_pb2

    pattern = f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb" if run_id else "wandb/offline-run-*/run-*.wandb"
    files = sorted(run_dir.glob(pattern))
    if run_id is None and len({f.name for f in files}) > 1:
        raise ValueError(f"segments of different W&B runs under {run_dir}: {files}")
    rows = []
    for file in files:
        for raw in _records(file):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") != "history":
                continue
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows
