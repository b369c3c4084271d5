"""Size and shape of the code, for the structure table in results/structure.md.

Prints files and lines per package, the longest modules and functions, the README's length and,
for a few options, the places each is declared: a parameter of a CLI command, a field of an
options dataclass (`*Options`, `RaySettings`), a key of a module-level `*_FLAGS` table.
Read from the source alone (nothing is imported), so it runs at any commit:

    python scripts/structure_stats.py [--root DIR]
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

OPTIONS = ("steps", "grace_period", "max_concurrent", "seed", "model")
SOURCES = ("autoprompt_search", "cli", "benchmarks", "scripts")


def python_files(root: Path) -> list[Path]:
    return sorted(p for d in SOURCES for p in (root / d).rglob("*.py"))


def is_command(node: ast.FunctionDef) -> bool:
    return any("command" in ast.unparse(d) for d in node.decorator_list)


def declarations(tree: ast.Module) -> dict[str, int]:
    """Option name -> how many times this module declares it."""
    found: dict[str, int] = defaultdict(int)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and is_command(node):
            for arg in node.args.args + node.args.kwonlyargs:
                found[arg.arg] += 1
        elif isinstance(node, ast.ClassDef) and (node.name.endswith("Options") or node.name == "RaySettings"):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    found[item.target.id] += 1
    for node in tree.body:
        flags = isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id.endswith("_FLAGS") for t in node.targets
        )
        if flags and isinstance(node.value, ast.Dict):  # type: ignore[union-attr]
            for key in node.value.keys:  # type: ignore[union-attr]
                if isinstance(key, ast.Constant):
                    found[str(key.value)] += 1
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    root = Path(ap.parse_args().root)
    per_package: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    modules, functions = [], []
    declared: dict[str, int] = defaultdict(int)
    for path in python_files(root):
        rel = path.relative_to(root)
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        package = str(rel.parent)
        per_package[package][0] += 1
        per_package[package][1] += lines
        modules.append((lines, str(rel)))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.name}"))  # type: ignore[operator]
        for name, count in declarations(tree).items():
            declared[name] += count
    print("| package | files | lines |\n|---|---|---|")
    for package, (files, lines) in sorted(per_package.items()):
        print(f"| {package} | {files} | {lines} |")
    modules.sort(reverse=True)
    functions.sort(reverse=True)
    print("\nlongest modules: " + ", ".join(f"{name} {n}" for n, name in modules[:3]))
    print("longest functions: " + ", ".join(f"{name} {n}" for n, name in functions[:3]))
    print(f"modules over 400 lines: {sum(n > 400 for n, _ in modules)}; functions over 80: "
          f"{sum(n > 80 for n, _ in functions)}")  # fmt: skip
    readme = (root / "README.md").read_text(encoding="utf-8")
    print(f"README: {len(readme.splitlines())} lines, {len(readme.split())} words")
    print("places an option is declared: " + ", ".join(f"{name} {declared[name]}" for name in OPTIONS))


if __name__ == "__main__":
    main()
