"""Reads back what W&B wrote in offline mode: the history rows of a run's `.wandb` transaction logs.

Resuming needs it: W&B cannot resume an offline run in place (each process writes a new segment under the same
run id), and a process that is killed loses what W&B had not yet flushed to its segment. So on resume, the
steps the earlier segments really hold are read back, and the complete rounds missing there are logged again.
W&B ships no Python reader for these files (its core is a Go binary). The format is a LevelDB-style record log
(a 7-byte ':W&B' header, then 32 KiB blocks of checksummed chunks), each record a `wandb_internal_pb2.Record`;
a segment cut short or torn (a wandb-core killed mid-flush) ends at its last whole record whose CRC-32 checks
out.
"""

from __future__ import annotations

import json
import pathlib
import struct
import zlib
from collections.abc import Iterator
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7  # ident ":W&B" (4), magic (2), version (1)
_CHUNK_HEADER = 7  # CRC-32 of kind and data (4), length (2), kind (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: pathlib.Path) -> Iterator[bytes]:
    """The whole records of one segment, in order, up to the first chunk that is cut short or fails its
    checksum: a wandb-core killed mid-flush leaves a torn tail, and nothing after it can be trusted."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        return
    pos, pending = _HEADER, None
    while pos + _CHUNK_HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _CHUNK_HEADER:  # block trailer padding
            pos += room
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += room
            continue
        chunk = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            return
        pos += _CHUNK_HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE and pending is not None:
            pending += chunk
        elif kind == _LAST and pending is not None:
            yield pending + chunk
            pending = None
        else:
            return


def offline_records(run_dir: pathlib.Path, run_id: str | None = None) -> Iterator[Any]:
    """The `wandb_internal_pb2.Record`s of the offline W&B run under `run_dir`: one segment, or several sharing
    one run id when the job was resumed (W&B writes a segment per process), in order. A segment ends at its last
    whole record that checks out."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    pattern = f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb" if run_id else "wandb/offline-run-*/run-*.wandb"
    files = sorted(run_dir.glob(pattern))
    if run_id is None and len({f.name for f in files}) > 1:
        raise ValueError(f"segments of different W&B runs under {run_dir}: {files}")
    for file in files:
        for raw in _records(file):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(raw)
            except DecodeError:
                break
            yield record


def offline_history(run_dir: pathlib.Path, run_id: str | None = None) -> list[dict]:
    """The history rows (`_step` plus logged keys) of the offline W&B run under `run_dir` (`offline_records`)."""
    rows = []
    for record in offline_records(run_dir, run_id):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows
