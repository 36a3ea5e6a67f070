"""Values as the run directory's JSON holds them, converted before anything is written.

What has an obvious JSON form takes it: numpy scalars and arrays their Python values, tuples and sets lists,
dates and times their ISO text (what Parquet and `datasets` give for timestamp columns), decimals floats, paths
and UUIDs their text. Anything else (bytes, objects) is refused with `NotJsonable`, naming where it was, so that
a prompt column JSON cannot hold stops the job before round 1, not after a round's checkpoint. So is a string
no UTF-8 file can hold (a lone surrogate, which a JSON escape like "\\ud800" gives), in a value or a key.
"""

from __future__ import annotations

import datetime
import decimal
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any

from onpolicy.errors import OnpolicyError

_AS_IS = (str, int, float, bool, type(None))
_AS_TEXT = (pathlib.PurePath, uuid.UUID)
_ISO = (datetime.datetime, datetime.date, datetime.time)


class NotJsonable(OnpolicyError):
    """A value JSON has no obvious form for."""


def lone_surrogate(text: str) -> int | None:
    """Where `text` holds half of a UTF-16 pair (a lone surrogate, from an escape like "\\ud800"), which no
    UTF-8 file can hold; None when it is text throughout."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def jsonable(value: Any, where: str) -> Any:
    """`value` in its JSON form (see the module); `where` names it in the error when it has none."""
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, _AS_IS):
        return value
    if isinstance(value, Mapping):
        return {_key(key, where): jsonable(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [jsonable(item, f"{where}[{i}]") for i, item in enumerate(items)]
    if isinstance(value, _ISO):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, _AS_TEXT):
        return str(value)
    if type(value).__module__ == "numpy":  # numpy scalars and arrays, without importing numpy here
        return jsonable(value.tolist(), where)
    shown = repr(value)
    raise NotJsonable(
        f"{where} is {type(value).__name__} {shown[:60]}{'...' if len(shown) > 60 else ''}, which the run "
        "directory's JSON cannot hold; convert it to text or numbers (or drop it) first"
    )


def _text(text: str, where: str) -> str:
    if (at := lone_surrogate(text)) is not None:
        raise NotJsonable(
            f"{where} holds {text[at]!r} at character {at}, half of a UTF-16 pair (a lone surrogate), which is not "
            "text and no file can hold; fix it first"
        )
    return text


def _key(key: Any, where: str) -> str:
    if isinstance(key, str):
        return _text(key, f"{where}, key {key!r}")
    if isinstance(key, (int, float, bool)) or type(key).__module__ == "numpy":
        return str(jsonable(key, where))
    raise NotJsonable(f"{where} has a key {key!r} of type {type(key).__name__}; JSON keys are text")
