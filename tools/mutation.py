"""Mutation testing of the shipped drivers against their contract tests, with cosmic-ray.

    pip install 'conveyor[mutation]'
    python tools/mutation.py memory-broker [memory-backend ...] [--sample N] [--budget SECONDS]
                                           [--json bench/mutation-results.json]

Slow (each surviving mutant costs a full contract run), so it is not part of CI. It never
touches the working tree: the committed files (``git archive HEAD``) are unpacked into a
temporary directory, laid out as the ``conveyor`` package there and put first on
``PYTHONPATH``, so the mutants shadow the installed package only inside the runs it starts.
cosmic-ray mutates the driver file of that copy, one mutant at a time, and runs the target's
contract tests (``pytest -x``: the first failing test kills the mutant). With ``--budget`` the
run stops after that many seconds and the kill rate covers the mutants that ran.

The report lists every surviving mutant (operator, line, diff) to be killed by a new test or
argued equivalent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: name -> (file to mutate, pytest arguments selecting its contract tests)
TARGETS: dict[str, tuple[str, list[str]]] = {
    "memory-broker": ("brokers/memory.py",
                      ["tests/contract/test_memory.py", "tests/unit/test_memory_reference.py",
                       "-k", "TestMemoryBroker or memory_broker or memory_reserve"]),
    "memory-backend": ("backends/memory.py",
                       ["tests/contract/test_memory.py", "tests/unit/test_memory_reference.py",
                        "-k", "TestMemoryResultBackend or memory_backends"]),
    "sqlite-broker": ("brokers/sql.py",
                      ["tests/contract/test_sql.py", "-k", "TestSQLiteBroker"]),
    "sqlite-backend": ("backends/sql.py",
                       ["tests/contract/test_sql.py", "-k", "TestSQLiteResultBackend"]),
    "redis-broker": ("brokers/redis.py",
                     ["tests/contract/test_redis.py", "-k", "TestRedisBroker"]),
    "redis-backend": ("backends/redis.py",
                      ["tests/contract/test_redis.py", "-k", "TestRedisResultBackend"]),
}


def _copy_tree(dest: Path) -> Path:
    """Unpack HEAD into ``dest`` and lay out ``dest/pkg/conveyor`` as the package maps it."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    package = dest / "pkg" / "conveyor"
    package.parent.mkdir()
    package.symlink_to(dest / "core")
    for sub in ("brokers", "backends", "contrib"):
        (dest / "core" / sub).symlink_to(dest / sub)
    return dest / "pkg"


def _config(work: Path, module: str, tests: list[str], timeout: float) -> Path:
    command = " ".join([
        sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
        "-p", "no:randomly", *(f"'{t}'" for t in tests)])
    config = work / "cosmic-ray.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n'
        "\n[cosmic-ray.distributor]\n"
        'name = "local"\n')
    return config


def _results(session: Path) -> list[dict[str, object]]:
    """Every mutant of the session: operator, line, outcome (killed/survived/...), diff."""
    rows = sqlite3.connect(session).execute(
        "SELECT m.operator_name, m.start_pos_row, r.test_outcome, r.diff, r.worker_outcome "
        "FROM mutation_specs m LEFT JOIN work_results r ON m.job_id = r.job_id").fetchall()
    return [{"operator": op, "line": line, "outcome": (outcome or "not run").lower(),
             "worker": (worker or "").lower(), "diff": diff or ""}
            for op, line, outcome, diff, worker in rows]


def _sample(session: Path, size: int, seed: int) -> None:
    """Keep a uniform random sample of ``size`` mutants; mark the others skipped, which
    ``cosmic-ray exec`` leaves alone (a full run of a driver takes hours)."""
    db = sqlite3.connect(session)
    # In source order, not by job id (random per init): one seed draws the same mutants
    # from the same file.
    jobs = [j for (j,) in db.execute(
        "SELECT job_id FROM mutation_specs ORDER BY start_pos_row, start_pos_col, "
        "operator_name, occurrence")]
    keep = set(random.Random(seed).sample(jobs, min(size, len(jobs))))
    db.executemany("INSERT INTO work_results (job_id, worker_outcome) VALUES (?, 'SKIPPED')",
                   [(j,) for j in jobs if j not in keep])
    db.commit()
    db.close()


def run(target: str, budget: float | None, per_mutant: float, sample: int | None,
        seed: int) -> dict[str, object]:
    """Mutation-test one target; return its summary and surviving mutants."""
    module, tests = TARGETS[target]
    with tempfile.TemporaryDirectory(prefix="conveyor-mutation-") as scratch:
        work = Path(scratch)
        pkg = _copy_tree(work)
        config = _config(work, module, tests, per_mutant)
        # The test runs inherit it: `conveyor` is the copy's, mutant included.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(pkg), str(work), os.environ.get("PYTHONPATH", "")])}
        session = work / "session.sqlite"
        subprocess.run(["cosmic-ray", "init", str(config), str(session)], cwd=work, check=True)
        if sample is not None:
            _sample(session, sample, seed)
        started = time.monotonic()
        proc = subprocess.Popen(["cosmic-ray", "exec", str(config), str(session)], cwd=work,
                                env=env, start_new_session=True)
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        elapsed = time.monotonic() - started
        mutants = _results(session)
    ran = [m for m in mutants if m["outcome"] in ("killed", "survived")]
    skipped = sum(m["worker"] == "skipped" for m in mutants)
    killed = sum(m["outcome"] == "killed" for m in ran)
    return {"target": target, "file": module, "tests": " ".join(tests),
            "mutants": len(mutants), "sampled_out": skipped, "ran": len(ran), "killed": killed,
            "survived": len(ran) - killed, "seconds": round(elapsed),
            "kill_rate": round(killed / len(ran), 3) if ran else None,
            "survivors": [m for m in ran if m["outcome"] == "survived"]}


def main() -> None:
    """Run the targets named on the command line; print (and append) a report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", choices=sorted(TARGETS))
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per target before the run stops (default: no limit)")
    parser.add_argument("--per-mutant", type=float, default=120.0,
                        help="seconds one test run may take before the mutant counts as "
                             "killed by a timeout (default 120)")
    parser.add_argument("--sample", type=int, default=None,
                        help="run only this many mutants, drawn uniformly at random")
    parser.add_argument("--seed", type=int, default=15, help="seed of the sample")
    parser.add_argument("--json", type=Path, default=None, help="write the summaries here")
    args = parser.parse_args()
    summaries = [run(t, args.budget, args.per_mutant, args.sample, args.seed)
                 for t in args.targets]
    for s in summaries:
        print(f"{s['target']}: {s['killed']}/{s['ran']} killed "
              f"({s['kill_rate']}), {s['mutants']} mutants in all, {s['seconds']} s")
        for m in s["survivors"]:  # type: ignore[attr-defined]
            print(f"  survived: line {m['line']} {m['operator']}\n{m['diff']}")
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=2))


if __name__ == "__main__":
    main()
