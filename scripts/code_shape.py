"""The shape of the package, as docs/architecture.md states it: the lines of the trainer module,
the functions over 60 lines, the imports of srft modules made inside functions, and the
import graph between srft modules (the diagram in docs/architecture.md is made from it).

    python scripts/code_shape.py            # the numbers
    python scripts/code_shape.py --graph    # also the module -> imported srft modules list
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "srft"
LIMIT = 60


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _srft_targets(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "srft":
        if node.module == "srft":  # from srft import x: x is a module
            return [f"srft.{a.name}" for a in node.names]
        return [node.module]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "srft"]
    return []


def scan():
    """(every function's (lines, place), srft imports made inside functions, the module graph)."""
    functions, inner_imports, graph = [], [], {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        name = module_name(path)
        graph[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1,
                                  f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name}"))
                for sub in ast.walk(node):
                    for t in _srft_targets(sub):
                        inner_imports.append(f"{path.relative_to(SRC.parent)}:{sub.lineno} {t}")
        for node in ast.walk(tree):  # imports at the top and deferred ones alike
            graph[name].update(t for t in _srft_targets(node) if t != name)
    return functions, sorted(set(inner_imports)), graph


def main(argv: list[str]) -> int:
    functions, inner_imports, graph = scan()
    trainer = SRC / "trainer.py"
    print(f"srft/trainer.py: {len(trainer.read_text().splitlines())} lines")
    long_functions = sorted((f for f in functions if f[0] > LIMIT), reverse=True)
    print(f"functions over {LIMIT} lines: {len(long_functions)}")
    for n, where in long_functions:
        print(f"  {n:4d}  {where}")
    n, where = max(functions)
    print(f"longest function: {n} lines ({where})")
    print(f"imports of srft modules inside functions: {len(inner_imports)}")
    for line in inner_imports:
        print(f"  {line}")
    if "--graph" in argv:
        print("\nimport graph (module -> srft modules it imports):")
        for mod in sorted(graph):
            print(f"  {mod} -> {', '.join(sorted(graph[mod])) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
