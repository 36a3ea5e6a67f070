"""Values as the run directory's JSON holds them, converted before anything is written.

What has an obvious JSON form takes it: numpy scalars and arrays their Python values, tuples and sets lists,
dates and times their ISO text (what Parquet and `datasets` give for timestamp columns), decimals floats, paths
and UUIDs their text. Anything else (bytes, objects) is refused with `NotJsonable`, naming where it was, so that
a prompt column JSON cannot hold stops the job before round 1, not after a round's checkpoint.
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


def jsonable(value: Any, where: str) -> Any:
    """`value` in its JSON form (see the module); `where` names it in the error when it has none."""
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


def _key(key: Any, where: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (int, float, bool)) or type(key).__module__ == "numpy":
        return str(jsonable(key, where))
    raise NotJsonable(f"{where} has a key {key!r} of type {type(key).__name__}; JSON keys are text")
