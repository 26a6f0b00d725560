"""``conveyor worker``."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

import click

from conveyor.app import Conveyor
from conveyor.cli.common import app_from, pass_state, queues_option, split_queues, url_options
from conveyor.cli.output import visible


@click.command()
@url_options
@queues_option()
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=None,
              help="Threads (threads pool) or processes (processes pool).")
@click.option("-P", "--pool", type=click.Choice(["threads", "processes", "prefork", "solo"]),
              default=None, help="threads or processes (Celery's prefork means processes; "
                                 "solo, one thread).")
@click.option("--threads", "threads_per_process", type=click.IntRange(min=1), default=1,
              show_default=True, help="Threads in each process of the processes pool.")
@click.option("--prefetch-multiplier", type=click.IntRange(min=1), default=None)
@click.option("-n", "--hostname", default=None, help="Name of this worker in histories.")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@pass_state
def worker(state: dict[str, Any], app_path: str | None, queues: str | None,
           concurrency: int | None, pool: str | None, threads_per_process: int,
           prefetch_multiplier: int | None, hostname: str | None, loglevel: str) -> None:
    """Run a worker: reserve tasks from QUEUES and run them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(VisibleFormatter(
        "[%(asctime)s %(levelname)s %(processName)s] %(message)s"))
    logging.basicConfig(level=loglevel.upper(), handlers=[handler])
    # Handle SIGTERM from the start: importing the app and building drivers can take seconds
    # (a restarted child of the processes pool), and a stop asked for meanwhile must end the
    # worker cleanly (exit 0) instead of killing it.
    signals: dict[str, Any] = {"count": 0, "consumer": None}

    def on_signal(signum: int, _frame: object) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            logging.getLogger("conveyor.worker").warning("second signal: exiting now")
            os._exit(1)
        logging.getLogger("conveyor.worker").info(
            "signal %d: finishing running tasks (send again to exit at once)", signum)
        if signals["consumer"] is not None:
            signals["consumer"].stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app = app_from(state, app_path)
    pool = pool or app.conf.worker_pool
    if pool == "solo":       # Celery's names, for commands ported as they are
        pool, concurrency = "threads", 1
    elif pool == "prefork":
        pool = "processes"
    names = split_queues(queues, app)
    _load_drivers(app)
    if signals["count"]:
        sys.exit(0)
    if pool == "processes":
        from conveyor.worker.supervisor import Supervisor

        child = ["worker", "-A", app_path or state.get("app_path") or "", "-Q", ",".join(names),
                 "--pool", "threads", "-c", str(threads_per_process), "-l", loglevel]
        if not (app_path or state.get("app_path")):
            child = [a for a in child if a not in ("-A", "")]
        if prefetch_multiplier:
            child += ["--prefetch-multiplier", str(prefetch_multiplier)]
        prefix = []
        for flag, key in (("--broker", "broker"), ("--backend", "backend")):
            if state.get(key):
                prefix += [flag, state[key]]
        sys.exit(Supervisor([*prefix, *child],
                            processes=concurrency or app.conf.worker_concurrency).run())

    from conveyor.worker.consumer import RECYCLE, Consumer
    from conveyor.worker.limits import reexec

    consumer = Consumer(app, queues=names, concurrency=concurrency,
                        prefetch_multiplier=prefetch_multiplier, hostname=hostname)
    signals["consumer"] = consumer
    if signals["count"]:
        consumer.stop()
    started = time.monotonic()
    code = consumer.run()
    logging.getLogger("conveyor.worker").info("%s", drain_summary(
        consumer.processed, failed=consumer.runner.failed,
        retried=getattr(consumer.runner, "retried", 0), seconds=time.monotonic() - started))
    if code == RECYCLE:  # a thread is stuck past a hard time limit: start afresh
        reexec()
    sys.exit(code)


def _load_drivers(app: Conveyor) -> None:
    """Fail now, once, on what no retry fixes (a driver's client library not installed, a
    malformed URL): otherwise a processes pool would restart children that die of it for
    ever. An unreachable server is left to the worker's backoff."""
    from conveyor.exceptions import ConfigurationError, ConveyorError, MissingDependencyError

    for kind in ("broker", "backend"):
        try:
            getattr(app, kind)
        except (MissingDependencyError, ConfigurationError):
            raise
        except ConveyorError:
            pass


def drain_summary(processed: int, *, failed: int, retried: int, seconds: float) -> str:
    """The worker's last line: what it did and how fast."""
    rate = processed / seconds if seconds > 0 else 0.0
    return (f"worker stopped: {processed} messages processed ({failed} failed, "
            f"{retried} retried) in {seconds:.1f} s, {rate:.1f}/s")


class VisibleFormatter(logging.Formatter):
    """Log lines with control characters made visible: task names and ids in them are
    untrusted, and could otherwise restyle or rewrite the operator's terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return visible(super().formatMessage(record))


COMMANDS = [worker]
