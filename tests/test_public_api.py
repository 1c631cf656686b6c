"""The public API: a small, lazy surface whose type-checker view matches what loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import memory_tiers


def test_the_exports_type_checkers_see_are_the_ones_that_load() -> None:
    """The TYPE_CHECKING imports and the lazy table name the same exports from the same modules."""
    tree = ast.parse(Path(memory_tiers.__file__).read_text())
    [block] = [
        n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
    ]
    typed = {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == memory_tiers._MODULE_OF
    assert sorted(typed) == memory_tiers.__all__ == dir(memory_tiers)


def test_every_export_loads_and_importing_the_package_loads_no_torch() -> None:
    probe = "import sys, memory_tiers; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", probe], check=True)
    assert all(getattr(memory_tiers, name) is not None for name in memory_tiers.__all__)
    assert len(memory_tiers.__all__) <= 20
