"""A producer whose result backend is unreachable exits in bounded time
(``task_pending_exit_timeout``) and says once what it dropped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PRODUCER = """
from conveyor import Conveyor
app = Conveyor("exit", broker="sqlite:///{db}", backend="redis://127.0.0.1:1/0")

@app.task
def f():
    pass

for _ in range(3):
    f.delay()
print("sent", flush=True)
"""


def _run(tmp_path: Path, **env: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER.format(db=tmp_path / "q.db"))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], check=False, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})
    return time.monotonic() - started, proc


def test_exit_with_an_unreachable_backend_is_bounded_and_reported_once(tmp_path: Path) -> None:
    took, proc = _run(tmp_path, CONVEYOR_TASK_PENDING_EXIT_TIMEOUT="0.5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "sent"
    # Without the bound the writer's retries kept the interpreter alive for about 13 s.
    assert took < 8, (took, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if "PENDING" in line]
    assert lines == ["exiting with 3 PENDING records not written: the result backend did not "
                     "answer within task_pending_exit_timeout=0.5s (the tasks were sent and "
                     "will run; until a worker records them, other processes read exists() "
                     "== False)"], proc.stderr
