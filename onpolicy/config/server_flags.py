"""Which `vllm serve` flags `generation.server.extra_args` may pass to the servers onpolicy starts.

extra_args come after the flags onpolicy sets, so they would override them, and they are a command line, which
`ps` shows to every user of the machine. Refused: the flags onpolicy sets, flags that carry a secret
(`--hf-token`: the environment variable HF_TOKEN does its job), and any argument holding a secret as
`onpolicy.config.redaction` finds them (a URL with a password, a JSON value with an `api_key`).

Each flag is checked as vLLM's parser reads it, not as written. vLLM's FlexibleArgumentParser
(vllm/utils/argparse_utils.py) turns underscores in a flag's name into dashes (`--api_key` is `--api-key`), takes
`--flag=value`, reads `--flag.field value` as a field of the JSON flag `--flag`, and `--config FILE` as the
flags a YAML file holds (refused: they would escape this check); it keeps argparse's
allow_abbrev, so any unambiguous prefix of a flag is that flag (`--hos` is `--host`, `-t` is `-tp`). A prefix of
a refused flag is refused too: no vLLM option is one (tests/test_config.py checks this against vLLM's parser).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from onpolicy.config.redaction import is_secret_key, secrets_in

_TENSOR_PARALLEL = "set generation.tensor_parallel_size (the layout gives each server that many GPUs)"
# `vllm serve` flags a started server gets from onpolicy (why they are onpolicy's)
OWNED_FLAGS = {
    "--host": "started servers listen on 127.0.0.1 only (to serve other machines, start servers yourself and "
    "give generation.server.urls)",
    "--port": "it follows generation.server.port (one port per started server, counting up)",
    "--model": "started servers serve the policy the job trains",
    "--served-model-name": "the job addresses its servers by the name it gives them",
    "--tensor-parallel-size": _TENSOR_PARALLEL,
    "-tp": _TENSOR_PARALLEL,
    "--weight-transfer-config": "it follows generation.server.sync",
    "--api-key": "started servers take a key of the job's own on every route (for servers you start, give "
    "generation.server.api_key_env)",
}
# `vllm serve` flags whose value is a secret -> the environment variable that gives it to a server instead
SECRET_FLAGS = {"--hf-token": "HF_TOKEN"}
_NUMBER = re.compile(r"-\d[\d.e+-]*")  # a negative number is a value, not a flag


def check_extra_args(args: Sequence[str], where: str) -> None:
    """Raise ValueError, in one line naming `where` (the config key), for the first argument of `args` that sets a
    flag onpolicy owns, a secret flag, or holds a secret; the message never quotes the secret."""
    for index, arg in enumerate(args):
        if arg.split("=", 1)[0] == "--config":  # vLLM's parser reads flags from the file before anything checks them
            raise ValueError(
                f"{where}: --config would have vLLM read more flags from a file, which nothing here checks; give "
                "them in the list itself"
            )
        name = flag_name(arg)
        refused = None if name is None else _refused_flag(name)
        if refused is not None:
            written = arg.split("=", 1)[0]
            flag = written if written == refused else f"{written} (vLLM may read it as {refused})"
            if refused in OWNED_FLAGS:
                raise ValueError(f"{where}: {flag} is set by onpolicy; {OWNED_FLAGS[refused]}")
            raise ValueError(
                f"{where}: {flag} would show its secret on the server's command line (`ps` shows it to every "
                f"user of the machine); set the environment variable {SECRET_FLAGS[refused]} for the job instead: "
                "the servers it starts inherit it"
            )
        if _holds_secret(arg, name):
            raise ValueError(
                f"{where}[{index}] holds a secret, which would show on the server's command line (`ps` shows it "
                "to every user of the machine); give it to the server through an environment variable it reads"
            )


def flag_name(arg: str) -> str | None:
    """The flag `arg` names, as vLLM's parser reads it (`--api_key=k` -> `--api-key`, `--x.field` -> `--x`); None
    for a value."""
    if not arg.startswith("-") or arg in ("-", "--") or _NUMBER.fullmatch(arg):
        return None
    name = arg.split("=", 1)[0]
    if name.startswith("--"):
        name = name.split(".", 1)[0].replace("_", "-")
    return name


def _refused_flag(name: str) -> str | None:
    """The owned or secret flag `name` is, or abbreviates (argparse takes any unambiguous prefix)."""
    return next((flag for flag in (*OWNED_FLAGS, *SECRET_FLAGS) if flag.startswith(name)), None)


def _holds_secret(arg: str, name: str | None) -> bool:
    """Whether `arg` shows a secret: a field named like one (`--x.api_key`), or a value that holds one."""
    value = arg
    if name is not None:
        flag, _, value = arg.partition("=")
        if any(is_secret_key(field) for field in flag.split(".")[1:]):
            return True
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return bool(secrets_in(parsed))
