"""The pgqueuer side of the PostgreSQL comparison: a worker with one no-op entrypoint.

    python pgqueuer_app.py DSN BATCH_SIZE

Runs one :class:`pgqueuer.QueueManager` on an asyncpg connection (the driver pgqueuer's
README uses; its psycopg driver shares one connection between LISTEN and queries, and a
query can wait up to a second behind the notification reader) until SIGTERM or SIGINT.
Everything but ``batch_size`` is pgqueuer's default: unlimited jobs in flight, the
job-status log buffered and written per batch, jobs deleted from the queue table when done
(pgqueuer keeps no return value).
"""

from __future__ import annotations

import asyncio
import signal
import sys

ENTRYPOINT = "add"


async def serve(dsn: str, batch_size: int) -> None:
    import asyncpg  # type: ignore[import-untyped]
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.models import Job

    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint(ENTRYPOINT)
    async def add(job: Job) -> None:
        """No-op: the payload holds two numbers, and nobody reads a sum."""

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, qm.shutdown.set)
    try:
        await qm.run(batch_size=batch_size)
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
