"""Where driver code lives: the core never imports a driver or a family's shared code
(``conveyor.stores``), and brokers and backends never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _offending(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {str(path.relative_to(REPO)): sorted(m for m in _imports(path)
                                                if m.startswith(forbidden))
            for path in (REPO / folder).rglob("*.py")
            if any(m.startswith(forbidden) for m in _imports(path))}


def test_the_core_imports_no_driver_and_no_family_code() -> None:
    found = _offending("core", ("conveyor.brokers", "conveyor.backends"))
    found.update({path: names for path, names in _offending(
        "core", ("conveyor.stores",)).items() if not path.startswith("core/stores/")})
    assert found == {}


def test_brokers_and_backends_never_import_each_other() -> None:
    assert _offending("brokers", ("conveyor.backends",)) == {}
    assert _offending("backends", ("conveyor.brokers",)) == {}


def test_each_family_shares_its_client_code_from_core_stores() -> None:
    stores = {p.stem for p in (REPO / "core" / "stores").glob("*.py")} - {"__init__"}
    assert {"sql", "redis", "aws", "mongodb"} <= stores
    assert "conveyor.stores.aws" in _imports(REPO / "brokers" / "sqs.py")
    assert "conveyor.stores.aws" in _imports(REPO / "backends" / "s3.py")
