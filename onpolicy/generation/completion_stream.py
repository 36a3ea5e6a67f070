"""A vLLM server's streamed completion (`"stream": true`) read back into samples, each noted as it finishes.

A server gets its share of a round as one request, so that it batches all of it; answered whole, that request
says nothing until its last sample ends. Streamed, each choice comes as deltas (text; token ids, with
`return_token_ids`; the sampled tokens' log-probs, with `logprobs: 0`) and its last delta carries its
`finish_reason`: the moment that sample is done. vLLM builds the streamed deltas and the whole answer from the
same outputs (vllm/entrypoints/openai/completion/serving.py), so the samples joined from the deltas are the
whole answer's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from typing import Any

from onpolicy.errors import OnpolicyError
from onpolicy.types import Sample


@dataclasses.dataclass
class _Choice:
    text: list[str] = dataclasses.field(default_factory=list)
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None

    def sample(self) -> Sample:
        return Sample(
            text="".join(self.text),
            token_ids=tuple(self.token_ids),
            logprobs=tuple(self.logprobs),
            finish_reason="length" if self.finish_reason == "length" else "stop",
        )


def streamed_samples(lines: Iterable[bytes], expected: int, finished: Callable[[], None], server: str) -> list[Sample]:
    """The `expected` samples of a streamed completion (the lines of its server-sent events), by choice index
    (prompt-major, n per prompt); `finished()` is called as each one ends. An error event, an aborted choice, or
    a stream without its choices, or that ends before `[DONE]` or before every choice finished, fails the round,
    naming `server` ("the vLLM server at URL")."""
    choices = [_Choice() for _ in range(expected)]
    for line in lines:
        if not line.startswith(b"data:"):
            continue  # the blank line that ends each event
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        for delta in _deltas(data, expected, server):
            choice = choices[delta["index"]]
            choice.text.append(delta["text"])
            choice.token_ids.extend(delta["token_ids"])
            choice.logprobs.extend((delta.get("logprobs") or {}).get("token_logprobs") or ())
            if delta.get("finish_reason") is not None:
                if delta["finish_reason"] == "abort":
                    raise OnpolicyError(f"{server} aborted a request (it is shutting down or out of memory)")
                choice.finish_reason = delta["finish_reason"]
                finished()
    else:
        raise OnpolicyError(f"{server} ended its stream of /v1/completions before [DONE]")
    unfinished = sum(choice.finish_reason is None for choice in choices)
    if unfinished:
        raise OnpolicyError(f"{server} ended its stream of /v1/completions with {unfinished} choices unfinished")
    return [choice.sample() for choice in choices]


def _deltas(data: bytes, expected: int, server: str) -> list[dict[str, Any]]:
    """The choices' deltas of one event; an error event, or one whose choices lack their index (below
    `expected`), text or token ids, fails the round."""
    try:
        event = json.loads(data)
    except ValueError:
        event = None
    if isinstance(event, dict) and "error" in event:
        error = event["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise OnpolicyError(f"{server} failed while streaming /v1/completions: {message}")
    choices = event.get("choices") if isinstance(event, dict) else None
    if not (
        isinstance(choices, list)  # empty in a closing usage event
        and all(
            isinstance(c, dict)
            and isinstance(c.get("index"), int)
            and 0 <= c["index"] < expected
            and isinstance(c.get("text"), str)
            and isinstance(c.get("token_ids"), list)
            for c in choices
        )
    ):
        raise OnpolicyError(
            f"{server} streamed /v1/completions without the {expected} choices asked for (each with its index, text "
            f"and token_ids): {data[:200].decode(errors='replace')}"
        )
    return choices
