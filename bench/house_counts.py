"""House-keeping counts of the tree (issue 38): run before and after a refactor, compare by eye.

Prints, for ``src/bonefrac``:

- literal subscripts by a predictions column name outside ``rundir/`` (``frame["label"]``,
  ``row[["prob", "logit"]]``): the names are every module-level string constant of
  ``rundir/predictions.py`` and ``data/schema.py`` (the manifest's columns, which the
  predictions carry over by importing them), read from their source, so a new column is
  counted without an edit here; reported in all, and without ``data/`` (whose ``label``/``image_id``/``path``/``boxes``
  are the manifest's columns, owned by ``data/schema.py``);
- functions (and methods) longer than 80 lines, decorators excluded;
- the lines of ``BENCHMARKS.md`` and the scripts (``*.py``, ``*.sh``) directly under ``bench/``.

::

    python bench/house_counts.py            # the summary
    python bench/house_counts.py --list     # and every subscript and long function
    python bench/house_counts.py --repo DIR  # another checkout (a git worktree of a commit)
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "bonefrac"
PREDICTIONS = SRC / "rundir" / "predictions.py"
SCHEMA = SRC / "data" / "schema.py"
LONG = 80
#: the four names issue 38 counted (``["label"]``, ``["prob"]``, ``["logit"]``, ``["image_id"]``)
ISSUE_NAMES = {"label", "prob", "logit", "image_id"}


def column_names(source: Path = PREDICTIONS) -> set[str]:
    """Every ``NAME = "text"`` at module level of the predictions module."""
    names = set()
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            names.add(value.value)
    return names


def _slice_strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.List | ast.Tuple):
        return [s for elt in node.elts for s in _slice_strings(elt)]
    return []


def column_subscripts(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """``(line, name)`` of each subscript by a column name literal in ``path``."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Subscript):
            hits += [(node.lineno, s) for s in _slice_strings(node.slice) if s in names]
    return hits


def long_functions(path: Path, limit: int = LONG) -> list[tuple[str, int, int]]:
    """``(name, line, length)`` of each function in ``path`` over ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append((node.name, node.lineno, length))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list every hit")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to count")
    args = parser.parse_args()
    repo = args.repo.resolve()
    src = repo / "src" / "bonefrac"
    names = column_names(src / PREDICTIONS.relative_to(SRC)) | column_names(
        src / SCHEMA.relative_to(SRC)
    )
    modules = sorted(p for p in src.rglob("*.py") if "rundir" not in p.relative_to(src).parts)
    subs = {p: column_subscripts(p, names) for p in modules}
    subs = {p: hits for p, hits in subs.items() if hits}
    outside_data = {p: h for p, h in subs.items() if p.relative_to(src).parts[0] != "data"}
    longs = {p: long_functions(p) for p in sorted(src.rglob("*.py"))}
    longs = {p: f for p, f in longs.items() if f}
    per_name = Counter(name for hits in subs.values() for _, name in hits)
    bench = sorted(p.name for p in (repo / "bench").iterdir() if p.suffix in {".py", ".sh"})
    bench_lines = len((repo / "BENCHMARKS.md").read_text(encoding="utf-8").splitlines())

    total = sum(map(len, subs.values()))
    print(f"column-literal subscripts outside rundir/: {total} in {len(subs)} modules")
    n_out = sum(map(len, outside_data.values()))
    print(f"  of which outside data/ too: {n_out} in {len(outside_data)} modules")
    print("  by name: " + ", ".join(f"{k} {v}" for k, v in per_name.most_common()))
    four = {p: [h for h in hits if h[1] in ISSUE_NAMES] for p, hits in outside_data.items()}
    four = {p: h for p, h in four.items() if h}
    names4 = "/".join(sorted(ISSUE_NAMES))
    print(
        f"  of which {names4} outside data/: {sum(map(len, four.values()))} in {len(four)} modules"
    )
    print(f"functions over {LONG} lines in src/: {sum(map(len, longs.values()))}")
    print(f"BENCHMARKS.md lines: {bench_lines}")
    print(f"bench/ scripts (*.py, *.sh): {len(bench)}")
    if args.list:
        for path, hits in subs.items():
            where = ", ".join(f"{line}:{name}" for line, name in hits)
            print(f"  sub  {path.relative_to(repo)}: {where}")
        for path, funcs in longs.items():
            for name, line, length in funcs:
                print(f"  long {path.relative_to(repo)}:{line} {name} ({length} lines)")
        print("  bench: " + " ".join(bench))


if __name__ == "__main__":
    main()
