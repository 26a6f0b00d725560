"""Task and message ids."""

from __future__ import annotations

import random
import uuid


def new_id() -> str:
    """A random UUID4 string.

    Drawn from :mod:`random` (seeded from the OS at start and re-seeded in every forked
    child) rather than ``os.urandom``, which cost ~35 µs a call on virtual machines and was
    the largest single cost of ``delay()``. Ids must be unique, not unguessable.
    """
    return str(uuid.UUID(int=random.getrandbits(128), version=4))
