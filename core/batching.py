"""Batched writes where one refused value must not sink the rest of the batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from conveyor.backend import StoredRecord
from conveyor.exceptions import ValueRefusedError

T = TypeVar("T")


def store_each(store_many: Callable[[list[StoredRecord]], Sequence[T]],
               records: list[StoredRecord]) -> list[T | ValueRefusedError]:
    """``store_many(records)``, but a record the backend refuses does not sink the others:
    on :class:`ValueRefusedError` the batch is split in halves and retried until each refused
    record is alone. Returns, per record, the driver's answer or the refusal. Other errors
    propagate."""
    if not records:
        return []
    try:
        return list(store_many(records))
    except ValueRefusedError as exc:
        if len(records) == 1:
            return [exc]
    half = len(records) // 2
    return [*store_each(store_many, records[:half]), *store_each(store_many, records[half:])]
