"""House rules the code can check itself (docs/design.md): a column is spelled by its owner.

The predictions columns are spelled in ``rundir/predictions.py`` and the manifest's in
``data/schema.py`` (the carried-over ones, such as ``image_id`` or ``boxes``, are the
manifest's names, imported by rundir); everyone else subscripts by the constants. The check
reads the source (AST): a subscript whose key is a string literal naming a column
(``frame["label"]``, ``row[["prob", "logit"]]``, ``df.loc[i, "path"]``) outside ``rundir/``
and ``data/`` fails, and so does a predictions-only column spelled inside ``data/``.

Names that are also keys of other records (the run's ``model.json`` fields, metrics.json
entries, a fit's report) are left out: ``threshold``, ``temperature`` and ``refer`` name a
ModelMeta field as often as a predict-CSV column. A key that only shares a column's spelling
(torchvision's detection dict has ``boxes``) says so with ``# not a column`` on its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bonefrac.data.schema as schema
import bonefrac.rundir.predictions as predictions

SRC = Path(__file__).resolve().parents[1] / "src" / "bonefrac"
#: spelled like a column, but as often the key of a model.json / metrics.json record
RECORD_KEYS = {"threshold", "temperature", "refer"}
MARKER = "# not a column"


def _names(module: object) -> set[str]:
    return {v for k, v in vars(module).items() if k.isupper() and isinstance(v, str)}


MANIFEST_NAMES = _names(schema)
PREDICTION_NAMES = _names(predictions) - RECORD_KEYS


def _literals(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.List | ast.Tuple):
        return [s for elt in node.elts for s in _literals(elt)]
    return []


def column_literals(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``(line, name)`` of each subscript of ``source`` keyed by a literal in ``names``."""
    lines = source.splitlines()
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and MARKER not in lines[node.lineno - 1]:
            hits += [(node.lineno, s) for s in _literals(node.slice) if s in names]
    return sorted(hits)


def violations(root: Path = SRC) -> list[str]:
    """Every column literal outside its owner, as ``path:line: name``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        top = path.relative_to(root).parts[0]
        if top == "rundir":
            continue
        names = PREDICTION_NAMES - MANIFEST_NAMES if top == "data" else PREDICTION_NAMES
        names = names if top == "data" else names | MANIFEST_NAMES
        for line, name in column_literals(path.read_text(encoding="utf-8"), names):
            out.append(f"{path.relative_to(root)}:{line}: {name!r}")
    return out


def test_the_names_are_read_from_their_owners():
    assert {"image_id", "path", "label", "boxes", "source", "split"} <= MANIFEST_NAMES
    assert {"prob", "logit", "pred_boxes", "decision", "label"} <= PREDICTION_NAMES


def test_no_column_literal_outside_its_owner():
    found = violations()
    assert not found, "use the constants of rundir/predictions.py or data/schema.py:\n" + "\n".join(
        found
    )


@pytest.mark.parametrize(
    ("folder", "code", "flagged"),
    [
        ("evaluation", 'y = df["label"].to_numpy()\n', True),
        ("evaluation", 'p = row[["prob", "logit"]]\n', True),
        ("evaluation", 'p = df.loc[0, "path"]\n', True),
        ("data", 'y = df["label"]\n', False),  # the manifest's own room
        ("data", 'p = df["prob"]\n', True),  # a predictions column has no business there
        ("evaluation", 't = meta["threshold"]\n', False),  # a model.json key as often
        ("evaluation", 'b = found["boxes"]  # not a column: torchvision\'s dict\n', False),
        ("evaluation", "y = df[LABEL]\n", False),
    ],
)
def test_a_planted_literal_fails_the_check(tmp_path, folder, code, flagged):
    (tmp_path / "rundir").mkdir()
    (tmp_path / "rundir" / "x.py").write_text('y = df["label"]\n')  # the owner may
    (tmp_path / folder).mkdir(exist_ok=True)
    (tmp_path / folder / "planted.py").write_text(code)
    found = violations(tmp_path)
    assert bool(found) == flagged, found
    if flagged:
        assert found[0].startswith(f"{folder}/planted.py:1:")
