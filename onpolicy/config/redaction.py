"""Secrets stay out of the run directory, W&B and messages.

onpolicy reads API keys from environment variables (`api_key_env`), never from the config. A config can still
carry one: a reward's argument named like a key, a URL with a password or a signature in its query, a header. What
is written down (`config.yaml`, the W&B config) and what is printed (errors, warnings) shows `***` in its place:

- everything under a key named like a secret (a string, a number, each item of a list, each value of a mapping
  below it): a key with a word `key`, `apikey`, `token`, `secret`, `password`, `passwd`, `passphrase`,
  `credential`, `auth`, `authorization`, `cookie`, `signature` or `sig`, or the plural of one (`api_keys`),
  or a compound such as `accesstoken`. Words split at `_`, `-`, `.`, spaces and camelCase (`accessToken`,
  `clientSecret`, `X-Amz-Signature`). `tokens` alone counts tokens (`max_new_tokens`, `stop_tokens`): it is a
  secret only after a word such as `access`, `auth`, `api` or `hf`. `tokenizer` and `monkey` are not secrets,
  and a key ending in `_env` names an environment variable, not a secret;
- in any string: the password of a URL (`https://user:PASSWORD@host`), the value of a secret-named query
  parameter (`?sig=`, `X-Amz-Signature=`, `&token=`; not a fragment's: the labelling page's link carries its
  token after `#`, printed once for the people who label, and browsers never send a fragment on), the value of an
  `Authorization`, `Cookie` or `*-API-Key`-like header that starts a line or is quoted (`"Cookie: session=..."`,
  `{'Authorization': ...}`), and a `Bearer` token.

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
    {
        "key", "apikey", "token", "secret", "password", "passwd", "passphrase", "credential", "credentials", "auth",
        "authorization", "cookie", "signature", "sig",
    }
)  # fmt: skip
# words before `token`/`key`/`secret`/`password` that make a compound secret (`accesstoken`) or `tokens` a secret
_QUALIFIERS = ("access", "api", "auth", "bearer", "client", "hf", "id", "private", "refresh", "secret", "session")
_COMPOUND = re.compile(rf"(?:{'|'.join(_QUALIFIERS)})(?:key|token|secret|password)s?")
_WORD_BREAK = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

# In text, each with its secret as the group `secret`:
_URL_PASSWORD = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:(?P<secret>[^/\s@]+)@")
_PARAMETER = re.compile(r"[?&](?P<name>[A-Za-z0-9_.-]+)=(?P<secret>[^&#\s'\"]+)")  # checked by its name
_HEADER = re.compile(  # a header's name starts a line or is quoted: "a chocolate chip cookie: ..." is no header
    r"(?im)(?:^[ \t]*|(?<=['\"]))(?:[a-z]+-)*(?:authorization|cookie|api-key|auth-token)['\"]?[ \t]*:[ \t]*['\"]?"
    r"(?P<secret>[^\r\n'\"]+)"
)
_BEARER = re.compile(r"\bBearer\s+(?P<secret>[A-Za-z0-9._~+/-]{8,}=*)")


def is_secret_key(name: str) -> bool:
    words = [word.lower() for word in _WORD_BREAK.split(name) if word]
    if words and words[-1] == "env":
        return False
    return any(_is_secret_word(word, words[i - 1] if i else "") for i, word in enumerate(words))


def _is_secret_word(word: str, before: str) -> bool:
    if word in SECRET_WORDS or _COMPOUND.fullmatch(word):
        return True
    if word == "tokens":  # a count of them, unless it says whose
        return before in _QUALIFIERS
    return word.endswith("s") and word[:-1] in SECRET_WORDS  # api_keys, secrets, passwords, cookies


def redact(data: Any) -> Any:
    """A copy of `data` (the config as plain data) with its secrets masked."""
    return _masked(data, [])


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the secrets it shows (a URL's password, a secret query parameter, a header's value, a bearer
    token) and the values `secrets` (a config's, as `secrets_in` finds them) masked."""
    pieces, shown = [], 0
    for start, end in _secret_spans(text):
        if start >= shown:
            pieces += [text[shown:start], MASK]
        shown = max(shown, end)
    text = "".join(pieces) + text[shown:]
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


def _secret_spans(text: str) -> list[tuple[int, int]]:
    """Where `text` shows a secret, as (start, end) spans, sorted; one may hold another (a header's value and the
    bearer token in it)."""
    spans = [m.span("secret") for pattern in (_URL_PASSWORD, _HEADER, _BEARER) for m in pattern.finditer(text)]
    spans += [m.span("secret") for m in _PARAMETER.finditer(text) if is_secret_key(m["name"])]
    return sorted(spans)


def _masked(data: Any, found: list[str], secret: bool = False) -> Any:
    """A copy of `data` with its secrets masked, each secret value appended to `found`: the one walk both
    `redact` and `secrets_in` take, so that what is remembered is exactly what is masked. `secret`: `data` lies
    under a secret-named key, so every value in it is one."""
    if isinstance(data, dict):
        return {key: _masked(value, found, secret or is_secret_key(str(key))) for key, value in data.items()}
    if isinstance(data, list):
        return [_masked(value, found, secret) for value in data]
    if secret and isinstance(data, (str, int, float)) and not isinstance(data, bool) and data != "":
        found.append(str(data))
        return MASK
    if isinstance(data, str):
        found += [data[start:end] for start, end in _secret_spans(data)]
        return redact_text(data)
    return data
