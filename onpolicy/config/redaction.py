"""Secrets stay out of the run directory, W&B and messages.

onpolicy reads API keys from environment variables (`api_key_env`), never from the config. A config can still
carry one: a reward's argument named like a key, a URL with a password or a token in its query. What is written
down (`config.yaml`, the W&B config) and what is printed (errors, warnings) shows `***` in its place:

- the value of any key whose name has a part `key`, `apikey`, `token`, `secret`, `password`, `passwd`,
  `credential(s)`, `auth` or `authorization` (parts split at `_`, `-`, `.`; `max_new_tokens` and `tokenizer` are
  not secrets, and a key ending in `_env` names an environment variable, not a secret);
- the password of a URL (`https://user:PASSWORD@host`) and the value of a secret-named query parameter.

A message that might quote one of the config's secrets (an endpoint echoing a request, an exception showing an
argument) is scrubbed of them too: the caller hands them over (`Config.secrets()`, or `masking(secrets)` around
the work that may raise), so nothing is remembered between calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from onpolicy.errors import OnpolicyError

MASK = "***"
SECRET_WORDS = frozenset(
    {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials", "auth", "authorization"}
)
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)([^/\s@]+)(@)")
_SECRET_QUERY = re.compile(r"([?&][A-Za-z0-9_.-]+=)([^&#\s]+)")

def is_secret_key(name: str) -> bool:
    parts = [part for part in re.split(r"[_\-.\s]+", name.lower()) if part]
    if parts and parts[-1] == "env":
        return False
    return any(part in SECRET_WORDS for part in parts)


def redact(data: Any) -> Any:
    """A copy of `data` (the config as plain data) with its secrets masked."""
    return _masked(data, [])


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URL passwords, secret-named query parameters and the values `secrets` (a config's, as
    `secrets_in` finds them) masked."""
    text = _URL_PASSWORD.sub(rf"\1{MASK}\3", text)
    text = _SECRET_QUERY.sub(
        lambda m: m.group(1) + MASK if is_secret_key(m.group(1).strip("?&=")) else m.group(0),
        text,
    )
    long_enough = {secret for secret in secrets if len(secret) >= 4}  # a shorter "secret" would mask ordinary text
    for secret in sorted(long_enough, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


@contextmanager
def masking(secrets: Iterable[str]) -> Iterator[None]:
    """An `OnpolicyError` raised inside comes out with `secrets` masked in its message (same type)."""
    secrets = list(secrets)
    try:
        yield
    except OnpolicyError as exc:
        masked = redact_text(str(exc), secrets)
        if masked == str(exc):
            raise
        raise type(exc)(masked) from None


def secrets_in(data: Any) -> list[str]:
    """The secret values `redact` would mask in `data`."""
    found: list[str] = []
    _masked(data, found)
    return found


def _masked(data: Any, found: list[str]) -> Any:
    """A copy of `data` with its secrets masked, each secret value appended to `found`: the one walk both
    `redact` and `secrets_in` take, so that what is remembered is exactly what is masked."""
    if isinstance(data, dict):
        masked = {}
        for key, value in data.items():
            if is_secret_key(str(key)) and isinstance(value, str) and value:
                found.append(value)
                masked[key] = MASK
            else:
                masked[key] = _masked(value, found)
        return masked
    if isinstance(data, list):
        return [_masked(value, found) for value in data]
    if isinstance(data, str):
        found += [m.group(2) for m in _URL_PASSWORD.finditer(data)]
        found += [m.group(2) for m in _SECRET_QUERY.finditer(data) if is_secret_key(m.group(1).strip("?&="))]
        return redact_text(data)
    return data
