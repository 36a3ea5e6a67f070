"""After a sync, do the servers hold the weights the job sent? Asked of vLLM's own `/weight_checker`.

A server that silently keeps old weights samples a whole round from the wrong policy and nothing fails. vLLM's
`/weight_checker` (dev mode) returns a SHA-256 digest of each of its parameters' bytes; the job computes the same
digest of what it sent and compares the parameters a server holds exactly as sent (`comparable`): the one-
dimensional ones (norms, biases), which vLLM neither fuses, nor shards across tensor-parallel workers, nor pads,
nor re-packs for its CPU kernels. Servers of the same layout must also agree with each other on every parameter.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

import torch

from onpolicy.errors import OnpolicyError

_WORKER_PREFIX = re.compile(r"^(?:[a-z]+\d+:)+")  # vLLM's `dp0:pp0:pcp0:tp1:` before each parameter's name


def comparable(tensor: torch.Tensor) -> bool:
    """Whether a server holds this weight exactly as sent (see the module docstring)."""
    return tensor.dim() == 1


def digest(tensor: torch.Tensor) -> str:
    """The digest vLLM's `/weight_checker` gives a parameter holding `tensor` (its raw bytes' SHA-256)."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()


def check_servers(held: Mapping[str, Mapping[str, str]], sent: Mapping[str, str], version: str) -> None:
    """Raise, naming the server and a parameter, where a server's digests (`held`: server url -> its
    `/weight_checker` checksums) differ from what the job sent (`sent`: name -> digest) or from another server of
    the same layout."""
    checked = 0
    for url, checksums in held.items():
        differ = []
        for key, value in checksums.items():
            name = _WORKER_PREFIX.sub("", key)
            if name in sent:
                checked += 1
                if sent[name] != value:
                    differ.append(name)
        if differ:
            raise OnpolicyError(
                f"the vLLM server at {url} does not hold the weights of version {version!r} it was sent: "
                f"{len(differ)} parameter(s) differ, e.g. {differ[0]} (a sync it did not take, or weights changed "
                "by someone else); resume the run to send them again"
            )
    if not checked:
        raise OnpolicyError(
            "the servers' weight checksums name none of the policy's weights: is the policy the model they serve?"
        )
    first_url, first = next(iter(held.items()))
    for url, checksums in held.items():
        if checksums.keys() == first.keys() and checksums != first:
            name = next(key for key in first if first[key] != checksums[key])
            raise OnpolicyError(
                f"the vLLM servers at {first_url} and {url} hold different weights after the sync of version "
                f"{version!r}, e.g. {_WORKER_PREFIX.sub('', name)}; resume the run to send them again"
            )
