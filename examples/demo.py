"""The README's first command: a worker and a producer on the embedded default (SQLite).

Starts ``conveyor worker -A shop:app`` in the background, sends a result, a retry and a
failure, shows what the backend recorded, and stops the worker with SIGTERM. It works in a
temporary folder, removed at the end; ``--keep`` keeps it (with the worker log and the
database) to look around with ``conveyor result`` and ``conveyor dlq list``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    keep = "--keep" in (sys.argv[1:] if argv is None else argv)
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
    started_in = os.getcwd()
    os.chdir(workdir)  # conveyor.db is created here: the default needs no server
    try:
        return _demo(workdir, keep=keep)
    finally:
        os.chdir(started_in)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _demo(workdir: Path, *, keep: bool) -> int:
    sys.path.insert(0, str(HERE))
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    log = (workdir / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "conveyor", "worker", "-A", "shop:app",
                               "-c", "2"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from shop import app, factorial, fibonacci, my_task

        print(f"app: {app!r}")
        print(f"factorial.delay(5).get()     -> {factorial.delay(5).get(timeout=30)}")
        print(f"fibonacci.delay(n=5).get()   -> {fibonacci.delay(n=5).get(timeout=30)}")
        print("my_task.delay(1, 0): divides by zero, retries 3 times one second apart...")
        failing = my_task.delay(1, 0)
        try:
            failing.get(timeout=60)
        except ZeroDivisionError as exc:
            print(f"  -> state={failing.state} retries={failing.retries} error={exc!r}")
        for attempt in failing.attempts:
            print(f"     attempt {attempt['number']}: {attempt['outcome']:<8} "
                  f"{attempt['error_type']}")
        letters = app.broker.dead_letters("default")
        reason = letters[0].reason if letters else ""
        print(f"dead-letter queue: {len(letters)} message(s): {reason}")
        print(f"my_task.delay(6, 3).get()    -> {my_task.delay(6, 3).get(timeout=30)}")
        if keep:
            print(f"\nworker log: {workdir / 'worker.log'}")
            print(f"inspect:    cd {workdir} && conveyor result {failing.id} && "
                  "conveyor dlq list")
        else:
            print("\n(run with --keep to keep the database and worker log for a look around)")
        app.close()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        log.close()
    time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
