"""Mutation testing of the shipped drivers against their contract tests, with cosmic-ray.

    pip install 'conveyor[mutation]'
    python tools/mutation.py memory-broker [memory-backend ...] [--sample N] [--budget SECONDS]
                                           [--seed 15] [--commit REV]
                                           [--json bench/mutation-results.json]

Slow (each surviving mutant costs a full contract run), so it is not part of CI. It never
touches the working tree: the committed files of one commit (``git archive REV``, HEAD by
default, resolved once so that concurrent commits do not move it) are unpacked into a
temporary directory, laid out as the ``conveyor`` package there and put first on
``PYTHONPATH``, so the mutants shadow the installed package only inside the runs it starts.
cosmic-ray mutates the driver file of that copy, one mutant at a time, and runs the target's
contract tests (``pytest -x``: the first failing test kills the mutant). With ``--budget`` the
run stops after that many seconds and the kill rate covers the mutants that ran. Mutants inside
annotations are left out before sampling (every driver has ``from __future__ import
annotations``: they are never evaluated, so those mutants are equivalent by construction).

The report lists every surviving mutant (operator, line, diff) to be killed by a new test or
argued equivalent. ``--recheck OLD.json`` runs the survivors of an earlier report again, each
diff applied to the files of ``--commit`` (``patch`` finds a hunk that moved), against the
target's tests or ``--tests`` (for instance the PostgreSQL and MySQL classes too): it tells
which survivors the tests added since kill, without drawing a new sample. The unmutated copy
runs first and must pass; each kill names the first test that failed.

    python tools/mutation.py sqlite-broker --recheck bench/mutation-run3.json \
        --tests "tests/contract/test_sql.py -k 'SQLiteBroker or PostgresBroker'"
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shlex
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
    "mongodb-broker": ("brokers/mongodb.py",
                       ["tests/contract/test_mongodb.py", "-k", "TestMongoBroker"]),
    "mongodb-backend": ("backends/mongodb.py",
                        ["tests/contract/test_mongodb.py", "-k", "TestMongoResultBackend"]),
    "sqs-broker": ("brokers/sqs.py", ["tests/contract/test_aws.py", "-k", "TestSQSBroker"]),
    "s3-backend": ("backends/s3.py",
                   ["tests/contract/test_aws.py", "-k", "TestS3ResultBackend"]),
}


def _resolve(commit: str) -> str:
    """The full id of ``commit`` (a branch or ``HEAD`` moves while a long run goes on)."""
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", commit + "^{commit}"],
                          check=True, capture_output=True, text=True).stdout.strip()


def _copy_tree(dest: Path, commit: str) -> Path:
    """Unpack ``commit`` into ``dest``; lay out ``dest/pkg/conveyor`` as the package maps it."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True,
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


def _annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions (line, column) of every annotation in a module that has
    ``from __future__ import annotations``; none otherwise.

    Such annotations are never evaluated (they stay strings), so a mutant inside one (``X |
    None`` -> ``X + None``) is equivalent by construction: running it costs a full contract
    run and tells nothing.
    """
    tree = ast.parse(source)
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                 and any(a.name == "annotations" for a in n.names) for n in tree.body)
    if not future:
        return []
    spans = []
    for node in ast.walk(tree):
        notes: list[ast.expr | None] = []
        if isinstance(node, ast.arg):
            notes.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            notes.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            notes.append(node.annotation)
        for note in notes:
            if note is not None and note.end_lineno is not None:
                spans.append(((note.lineno, note.col_offset),
                              (note.end_lineno, note.end_col_offset or 0)))
    return spans


def _in_annotation(spans: list[tuple[tuple[int, int], tuple[int, int]]],
                   start: tuple[int, int], end: tuple[int, int]) -> bool:
    return any(a <= start and end <= b for a, b in spans)


def _sample(session: Path, source: str, size: int | None, seed: int) -> int:
    """Leave out mutants inside annotations, then keep a uniform random sample of ``size`` of
    the rest (all of them when ``size`` is None); mark the others skipped, which ``cosmic-ray
    exec`` leaves alone (a full run of a driver takes hours). Returns how many mutants were
    left out as annotations."""
    db = sqlite3.connect(session)
    spans = _annotation_spans(source)
    # In source order, not by job id (random per init): one seed draws the same mutants
    # from the same file. cosmic-ray's rows are 1-based, its columns 0-based, as ast's.
    rows = db.execute(
        "SELECT job_id, start_pos_row, start_pos_col, end_pos_row, end_pos_col "
        "FROM mutation_specs ORDER BY start_pos_row, start_pos_col, operator_name, "
        "occurrence").fetchall()
    jobs = [j for j, r0, c0, r1, c1 in rows if not _in_annotation(spans, (r0, c0), (r1, c1))]
    annotations = len(rows) - len(jobs)
    keep = set(jobs if size is None else random.Random(seed).sample(jobs, min(size, len(jobs))))
    db.executemany("INSERT INTO work_results (job_id, worker_outcome) VALUES (?, 'SKIPPED')",
                   [(j,) for j, *_ in rows if j not in keep])
    db.commit()
    db.close()
    return annotations


def run(target: str, *, budget: float | None, per_mutant: float, sample: int | None,
        seed: int, commit: str) -> dict[str, object]:
    """Mutation-test one target at ``commit``; return its summary and surviving mutants."""
    module, tests = TARGETS[target]
    with tempfile.TemporaryDirectory(prefix="conveyor-mutation-") as scratch:
        work = Path(scratch)
        pkg = _copy_tree(work, commit)
        config = _config(work, module, tests, per_mutant)
        # The test runs inherit it: `conveyor` is the copy's, mutant included.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(pkg), str(work), os.environ.get("PYTHONPATH", "")])}
        session = work / "session.sqlite"
        subprocess.run(["cosmic-ray", "init", str(config), str(session)], cwd=work, check=True)
        annotations = _sample(session, (work / module).read_text(), sample, seed)
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
    return {"target": target, "file": module, "commit": commit, "tests": " ".join(tests),
            "mutants": len(mutants), "in_annotations": annotations,
            "sampled_out": skipped - annotations, "ran": len(ran), "killed": killed,
            "survived": len(ran) - killed, "seconds": round(elapsed),
            "kill_rate": round(killed / len(ran), 3) if ran else None,
            "survivors": [m for m in ran if m["outcome"] == "survived"]}


def recheck(target: str, survivors: list[dict[str, object]], *, tests: list[str] | None,
            per_mutant: float, commit: str) -> dict[str, object]:
    """Apply each earlier survivor's diff to ``commit``'s files, one at a time, and run the
    tests on it; killed when they fail, survived when they pass, stale when the diff no
    longer applies (its line changed since)."""
    module, default_tests = TARGETS[target]
    args = default_tests if tests is None else tests
    rows = []
    with tempfile.TemporaryDirectory(prefix="conveyor-mutation-") as scratch:
        work = Path(scratch)
        pkg = _copy_tree(work, commit)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(pkg), str(work), os.environ.get("PYTHONPATH", "")])}
        pristine = (work / module).read_bytes()

        def run_tests() -> tuple[str, str]:
            """("killed" or "survived", the first failing test's line of pytest's summary)."""
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p",
                     "no:cacheprovider", "-p", "no:randomly", *args], cwd=work, env=env,
                    capture_output=True, text=True, timeout=per_mutant, check=False)
            except subprocess.TimeoutExpired:
                return "killed", "timeout"  # as cosmic-ray counts a timeout
            failed = [line for line in done.stdout.splitlines()
                      if line.startswith(("FAILED", "ERROR"))]
            return ("survived" if done.returncode == 0 else "killed",
                    failed[0] if failed else done.stdout.strip()[-300:])

        baseline, why = run_tests()
        if baseline != "survived":  # once more: a timing test can fail on a loaded machine
            baseline, why = run_tests()
        if baseline != "survived":  # the unmutated copy must pass, or every "kill" is noise
            raise SystemExit(f"{target}: the tests fail without a mutant: {why}")
        for mutant in survivors:
            (work / module).write_bytes(pristine)
            patch = subprocess.run(["patch", "-p1", "--batch", "--no-backup-if-mismatch",
                                    "-r", "-"], cwd=work, capture_output=True,
                                   input=str(mutant["diff"]).encode(), check=False)
            outcome, why = "stale", "the diff no longer applies"
            started = time.monotonic()
            if patch.returncode == 0:
                outcome, why = run_tests()
            rows.append({**mutant, "outcome": outcome, "by": why if outcome == "killed" else "",
                         "seconds": round(time.monotonic() - started)})
            print(f"{target} line {mutant['line']} {mutant['operator']}: {outcome} {why}",
                  flush=True)
        (work / module).write_bytes(pristine)
    return {"target": target, "file": module, "commit": commit, "tests": " ".join(args),
            "rechecked": len(rows), "killed": sum(r["outcome"] == "killed" for r in rows),
            "survived": sum(r["outcome"] == "survived" for r in rows),
            "stale": sum(r["outcome"] == "stale" for r in rows), "mutants": rows}


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
    parser.add_argument("--commit", default="HEAD",
                        help="the commit whose files are mutated and tested (default HEAD, "
                             "resolved once at the start)")
    parser.add_argument("--json", type=Path, default=None, help="write the summaries here")
    parser.add_argument("--recheck", type=Path, default=None,
                        help="run again the survivors this earlier --json report lists for "
                             "the targets named, instead of drawing a sample")
    parser.add_argument("--tests", default=None,
                        help="with --recheck: pytest arguments to run instead of the "
                             "target's (one shell-quoted string)")
    args = parser.parse_args()
    commit = _resolve(args.commit)
    if args.recheck:
        earlier = {s["target"]: s for s in json.loads(args.recheck.read_text())}
        rechecks = []
        for target in args.targets:
            rechecks.append(recheck(
                target, earlier[target]["survivors"], per_mutant=args.per_mutant,
                tests=None if args.tests is None else shlex.split(args.tests), commit=commit))
            if args.json:
                args.json.write_text(json.dumps(rechecks, indent=2))
        for r in rechecks:
            print(f"{r['target']} @ {commit[:7]}: of {r['rechecked']} earlier survivors "
                  f"{r['killed']} killed, {r['survived']} survived, {r['stale']} stale")
        return
    summaries = []
    for target in args.targets:
        summaries.append(run(target, budget=args.budget, per_mutant=args.per_mutant,
                             sample=args.sample, seed=args.seed, commit=commit))
        if args.json:  # after each target, so a long run's finished targets are kept
            args.json.write_text(json.dumps(summaries, indent=2))
    for s in summaries:
        print(f"{s['target']} @ {commit[:7]}: {s['killed']}/{s['ran']} killed "
              f"({s['kill_rate']}), {s['mutants']} mutants in all "
              f"({s['in_annotations']} in annotations, left out), {s['seconds']} s")
        for m in s["survivors"]:  # type: ignore[attr-defined]
            print(f"  survived: line {m['line']} {m['operator']}\n{m['diff']}")


if __name__ == "__main__":
    main()
