"""The import contracts can fail: each rule, broken once in a copy of the package.

``make test`` runs ``lint-imports`` on the real tree; these tests prove that a single
upward import (or a forbidden one from the core) in a copy of the tree is caught, so a
contract that silently stopped matching anything would show up here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

#: (module that gains the import, the import it gains): one per tier boundary.
VIOLATIONS = [
    ("px_middleware/config.py", "import px_middleware.core.model"),
    ("px_middleware/core/session.py", "import px_middleware.rest"),
    ("px_middleware/rest.py", "import px_middleware.delivery.retry"),
    ("px_middleware/delivery/retry.py", "import px_middleware.wsgi"),
    ("px_middleware/wsgi.py", "import px_middleware.flask"),
    ("px_middleware/asgi.py", "import px_middleware.starlette"),
    ("px_middleware/flask.py", "import px_middleware.tools.loader"),
    ("px_middleware/core/exchange.py", "import threading"),
    ("px_middleware/core/policy.py", "import httpx"),
    ("px_middleware/core/model.py", "import sqlite3"),
    ("px_middleware/core/scope.py", "import starlette.requests"),
]


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tree), "PATH": str(LINT_IMPORTS.parent)},
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    shutil.copytree(
        ROOT / "px_middleware", tree / "px_middleware",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_tree_keeps_every_contract(pristine: Path) -> None:
    result = lint_imports(pristine)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "statement"), VIOLATIONS)
def test_one_upward_or_forbidden_import_breaks_a_contract(
    pristine: Path, tmp_path: Path, module: str, statement: str
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    target = tree / module
    target.write_text(target.read_text() + f"\n{statement}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    imported = statement.split()[-1]
    if not imported.startswith("px_middleware"):
        imported = imported.split(".")[0]  # external packages are reported by top level
    assert f"-> {imported} " in result.stdout  # the report names the bad import
