"""The driver contract suite: what every broker and result backend must do, written as tests.

Shipped in the package so third-party drivers run the same suite as ours. Subclass
:class:`BrokerContract` / :class:`ResultBackendContract` (or single behaviour areas) in a
``Test*`` class and provide a ``broker_url`` / ``backend_url`` fixture; the suite builds the
driver through the registry, which also proves the entry point is registered. See
:mod:`conveyor.testing.plugin` for an example and for the opt-in command-line options.

Importing this package imports pytest, which conveyor itself does not depend on.
"""

from __future__ import annotations

try:
    import pytest
except ImportError as exc:  # pragma: no cover - pytest is installed wherever tests run
    from conveyor.exceptions import MissingDependencyError

    raise MissingDependencyError("conveyor.testing needs pytest: pip install pytest") from exc

# Installed packages are not assertion-rewritten by default; without this a failing contract
# test would only say "AssertionError".
pytest.register_assert_rewrite(
    "conveyor.testing.backend", "conveyor.testing.broker", "conveyor.testing.broker_admin",
    "conveyor.testing.coordination", "conveyor.testing.priority", "conveyor.testing.query",
    "conveyor.testing.broker_edges", "conveyor.testing.backend_edges", "conveyor.testing.outage",
    "conveyor.testing.e2e")

from conveyor.testing.backend import (  # noqa: E402 - after register_assert_rewrite
    BackendConcurrencyContract,
    BackendExpiryContract,
    BackendFixtures,
    BackendStoreGetContract,
    BackendTerminalWriteContract,
    BackendWaitContract,
)
from conveyor.testing.backend_edges import (  # noqa: E402
    BackendCoherenceContract,
    BackendGetManyContract,
    BackendIdentifierContract,
    BackendTTLContract,
)
from conveyor.testing.broker import (  # noqa: E402
    BrokerDelayContract,
    BrokerEnqueueReserveContract,
    BrokerFixtures,
    BrokerLeaseContract,
    BrokerTimings,
    reserve_count,
    reserve_within,
)
from conveyor.testing.broker_admin import (  # noqa: E402
    BrokerAdminContract,
    BrokerConcurrencyContract,
    BrokerDeadLetterContract,
)
from conveyor.testing.broker_edges import (  # noqa: E402
    BrokerCoherenceContract,
    BrokerLapsedLeaseContract,
    BrokerQueueIsolationContract,
    BrokerStaleReceiptContract,
)
from conveyor.testing.coordination import BackendCoordinationContract  # noqa: E402
from conveyor.testing.outage import (  # noqa: E402
    NOT_APPLICABLE,
    BackendOutageContract,
    BrokerOutageContract,
)
from conveyor.testing.priority import BrokerPriorityContract  # noqa: E402
from conveyor.testing.query import BackendQueryContract  # noqa: E402

__all__ = [
    "NOT_APPLICABLE",
    "BackendCoherenceContract",
    "BackendConcurrencyContract",
    "BackendCoordinationContract",
    "BackendExpiryContract",
    "BackendFixtures",
    "BackendGetManyContract",
    "BackendIdentifierContract",
    "BackendOutageContract",
    "BackendQueryContract",
    "BackendStoreGetContract",
    "BackendTTLContract",
    "BackendTerminalWriteContract",
    "BackendWaitContract",
    "BrokerAdminContract",
    "BrokerCoherenceContract",
    "BrokerConcurrencyContract",
    "BrokerContract",
    "BrokerDeadLetterContract",
    "BrokerDelayContract",
    "BrokerEnqueueReserveContract",
    "BrokerFixtures",
    "BrokerLapsedLeaseContract",
    "BrokerLeaseContract",
    "BrokerOutageContract",
    "BrokerPriorityContract",
    "BrokerQueueIsolationContract",
    "BrokerStaleReceiptContract",
    "BrokerTimings",
    "ResultBackendContract",
    "reserve_count",
    "reserve_within",
]


class BrokerContract(
    BrokerEnqueueReserveContract,
    BrokerLeaseContract,
    BrokerDelayContract,
    BrokerDeadLetterContract,
    BrokerAdminContract,
    BrokerConcurrencyContract,
    BrokerPriorityContract,
    BrokerStaleReceiptContract,
    BrokerLapsedLeaseContract,
    BrokerQueueIsolationContract,
    BrokerCoherenceContract,
    BrokerOutageContract,
):
    """Every broker guarantee. Subclass it in a ``Test*`` class and provide ``broker_url``
    (and, for a server-backed driver, ``unreachable_broker_url``: see
    :mod:`conveyor.testing.outage`)."""


class ResultBackendContract(
    BackendStoreGetContract,
    BackendTerminalWriteContract,
    BackendExpiryContract,
    BackendConcurrencyContract,
    BackendWaitContract,
    BackendCoordinationContract,
    BackendQueryContract,
    BackendIdentifierContract,
    BackendTTLContract,
    BackendGetManyContract,
    BackendCoherenceContract,
    BackendOutageContract,
):
    """Every result backend guarantee. Subclass it in a ``Test*`` class and provide
    ``backend_url`` (and, for a server-backed driver, ``unreachable_backend_url``)."""
