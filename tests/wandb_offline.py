"""Reads back what W&B wrote in offline mode: the history rows of a run's `.wandb` transaction log.

The file is W&B's LevelDB-style record log (a 7-byte ':W&B' header, then 32 KiB blocks of checksummed
chunks), each record a `wandb_internal_pb2.Record`.
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
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
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


def offline_history(run_dir: pathlib.Path) -> list[dict]:
    """The history rows (`_step` plus logged keys) of the single offline W&B run under `run_dir`."""
    from wandb.proto import wandb_internal_pb2

    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run under {run_dir}, found {files}"
    rows = []
    for raw in _records(files[0]):
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
