"""Running contract code in several threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_together(work: Callable[[int], T], count: int) -> list[T]:
    """Run ``work(0)`` ... ``work(count - 1)`` in ``count`` threads released together by a
    barrier; return their results in order, or raise the first error any thread raised."""
    results: list[T | None] = [None] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            start.wait()
            results[index] = work(index)
        except BaseException as exc:  # re-raised in the calling thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]  # every slot was filled: no errors
