"""setup.py's `EXTRAS`, read without running setup(): its string constants (e.g. GRAMMAR_ENGINE, a pin that both the core
requirements and an extra name) resolve the names inside it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def setup_extras(repo: Path = REPO) -> dict[str, list[str]]:
    tree = ast.parse((repo / "setup.py").read_text(encoding="utf-8"))
    constants = {node.targets[0].id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Constant)}
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "EXTRAS":
            return eval(compile(ast.Expression(node.value), "setup.py", "eval"), {"__builtins__": {}}, constants)
    raise AssertionError("setup.py defines no EXTRAS")
