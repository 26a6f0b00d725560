"""docs/driver-authors.md stays true: its code blocks are a driver package that passes the
contract suite.

The blocks whose first line names a file (``# toyqueue/broker.py``) are written to a
temporary directory; the ``pyproject.toml`` block's entry points become a ``.dist-info`` there,
so the registry finds the drivers by URL exactly as for an installed package; the guide's
test module then runs in a fresh pytest process. Every other Python block is executed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "driver-authors.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
NAMED = re.compile(r"^# (\S+\.py)\b")


def _blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(GUIDE.read_text()) if lang == language]


def _write_package(root: Path) -> list[str]:
    """Write the guide's files and entry points under ``root``; return the test files."""
    tests: list[str] = []
    for body in _blocks("python"):
        named = NAMED.match(body)
        if named and not named.group(1).startswith("tests/test_outage") and not (
                named.group(1).startswith("tests/test_e2e")):
            path = root / named.group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            if path.parent.name == "tests":
                tests.append(named.group(1))
            elif not (path.parent / "__init__.py").exists():
                (path.parent / "__init__.py").write_text("")
    [pyproject] = [b for b in _blocks("toml") if "[project.entry-points" in b]
    project = tomllib.loads(pyproject)["project"]
    dist = root / f"{project['name']}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) + "\n"
        for group, points in project["entry-points"].items()))
    return tests


def test_every_python_block_of_the_guide_runs() -> None:
    blocks = _blocks("python")
    assert len(blocks) >= 6
    for body in blocks:
        if NAMED.match(body) and NAMED.match(body).group(1).startswith("toyqueue/"):  # type: ignore[union-attr]
            continue  # modules: imported by the contract run below
        exec(compile(body, f"{GUIDE.name} block", "exec"), {"__name__": "guide_block"})


def test_the_guide_names_every_capability_field() -> None:
    import dataclasses

    from conveyor.backend import BackendCapabilities
    from conveyor.broker import BrokerCapabilities

    text = GUIDE.read_text()
    for caps in (BrokerCapabilities, BackendCapabilities):
        missing = [f.name for f in dataclasses.fields(caps) if f"`{f.name}`" not in text]
        assert not missing, f"{caps.__name__} fields the guide does not explain: {missing}"


@pytest.mark.timeout(600)
def test_the_guide_driver_passes_the_contract_suite(tmp_path: Path) -> None:
    tests = _write_package(tmp_path)
    assert tests == ["tests/test_contract.py"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop("CI", None)  # the inner run reports skips itself; they are counted below
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=580)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "failed" not in summary and "error" not in summary
    passed = int(re.search(r"(\d+) passed", summary).group(1))  # type: ignore[union-attr]
    assert passed >= 100, summary
    # Only what an in-process driver cannot do, or does not declare, may be skipped.
    skips = [line for line in run.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("not applicable" in s or "does not declare query" in s for s in skips), skips


@pytest.mark.parametrize("module", ["conveyor.brokers.memory", "conveyor.backends.memory"])
def test_every_contract_test_the_reference_drivers_cite_exists(module: str) -> None:
    import importlib
    import inspect

    import conveyor.testing as contract

    source = inspect.getsource(importlib.import_module(module))
    cited = set(re.findall(r"``(test_\w+)``", source))
    cited_areas = set(re.findall(r"``((?:Broker|Backend)\w+Contract)``", source))
    known = {name for area in contract.__all__ if area.endswith("Contract")
             for name in dir(getattr(contract, area)) if name.startswith("test_")}
    assert len(cited) >= 10
    assert cited <= known, f"cited but not in the contract: {sorted(cited - known)}"
    assert cited_areas <= set(contract.__all__)
