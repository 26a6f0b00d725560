"""A broker on one system and a result backend on another: one URL each.

    CONVEYOR_BROKER_URL=redis://broker-host:6379/0 \\
    CONVEYOR_BACKEND_URL=postgresql+psycopg://app:secret@db-host/shop \\
        conveyor worker -A mixed_hosts:app

and the same two variables (or the keyword arguments below) in the producer. Any broker works
with any backend: PostgreSQL as the broker and Redis for results is just the two URLs swapped.
The end-to-end suite runs this pairing both ways, each side on its own server
(tests/e2e/conftest.py, PAIRS).
"""

import os

from conveyor import Conveyor

app = Conveyor(
    "mixed_hosts",  # the module's name: tasks keep their names when it runs as a script
    broker=os.environ.get("CONVEYOR_BROKER_URL", "redis://localhost:6379/0"),
    backend=os.environ.get("CONVEYOR_BACKEND_URL",
                           "postgresql+psycopg://postgres@localhost:5432/postgres"),
)


@app.task(bind=True, max_retries=3, default_retry_delay=5)
def charge(self, order_id: int, cents: int) -> dict[str, int]:
    """Pretend to charge an order; the result lands in PostgreSQL, the message in Redis."""
    return {"order": order_id, "charged": cents}


if __name__ == "__main__":
    print(app)  # passwords are masked
    result = charge.delay(42, 1999)
    print(result.id, result.get(timeout=30))
