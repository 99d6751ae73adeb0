"""Shipped models: trained run directories that come with the package, found by name.

::

    src/bonefrac/shipped/
      aliases.json            {"default": "lite0-loc-1"}: names that stand for a shipped model
      lite0-loc-1/            a complete run directory (model.json, fp16 model.safetensors,
        MODEL_CARD.md           ood.safetensors, metrics.json, predictions/, config.yaml)

A RUN argument that is not a path on disk but a shipped model's name (``default``, or a
versioned name such as ``lite0-loc-1``) opens that folder (:func:`resolve_run`); an existing
path always wins, so a local folder called ``default`` is still read as a run directory. A
shipped model is read-only (:func:`refuse_write`): commands that write into a run work on a
copy (:func:`copy_run`), so the installed package, and the SHA-256 its weights were checked
against, never change.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from bonefrac.errors import RunDirError

#: The folder holding the shipped run directories (package data).
SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "shipped"
#: ``{alias: folder name}``; written with the shipped model it points at.
ALIASES_FILE = "aliases.json"
#: The name of the model ``bonefrac serve`` without RUN serves.
DEFAULT_NAME = "default"
#: The card beside each shipped model's weights (also kept in copies).
MODEL_CARD = "MODEL_CARD.md"
#: What a copy of a run leaves behind: Lightning's resume state is not part of a model.
_NOT_COPIED = ("checkpoints",)


def _root(root: Path | None) -> Path:
    """``root``, else :data:`SHIPPED_ROOT` as it is now (looked up per call, so tests can
    point it at a folder of their own)."""
    return SHIPPED_ROOT if root is None else root


def aliases(root: Path | None = None) -> dict[str, str]:
    """``{alias: shipped folder name}`` (``{}`` when no aliases file)."""
    path = _root(root) / ALIASES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path}: unreadable ({exc}); reinstall bonefrac") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise RunDirError(f"{path}: expected {{alias: model name}}; reinstall bonefrac")
    return {str(k): v for k, v in data.items()}


def shipped_models(root: Path | None = None) -> dict[str, Path]:
    """``{name: folder}`` of every shipped run directory (a folder with model.json)."""
    root = _root(root)
    if not root.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(root.iterdir())
        if not p.name.startswith(".") and (p / "model.json").is_file()
    }


def shipped_path(name: str, root: Path | None = None) -> Path | None:
    """The folder of the shipped model ``name`` (an alias or a folder name), else None."""
    root = _root(root)
    models = shipped_models(root)
    target = aliases(root).get(name, name)
    return models.get(target)


def names_line(root: Path | None = None) -> str:
    """The shipped names, for messages: ``default (lite0-loc-1), lite0-loc-1`` or ``none``."""
    root = _root(root)
    alias = [f"{a} ({t})" for a, t in aliases(root).items()]
    return ", ".join([*alias, *shipped_models(root)]) or "none"


def resolve_run(run: str | os.PathLike[str], root: Path | None = None) -> Path:
    """``run`` as given when it exists on disk, else the shipped model of that name, else
    ``run`` unchanged (opening it then says it is neither)."""
    path = Path(run)
    if path.exists() or len(path.parts) != 1:
        return path
    return shipped_path(str(run), root) or path


def shipped_name(path: str | os.PathLike[str], root: Path | None = None) -> str | None:
    """The shipped folder name when ``path`` is a shipped model's folder, else None."""
    try:
        here = Path(path).resolve()
    except OSError:
        return None
    if here.name.startswith("."):  # a model being packaged (staging) is written into
        return None
    inside = here.parent == _root(root).resolve() and (here / "model.json").is_file()
    return here.name if inside else None


def refuse_write(path: str | os.PathLike[str], root: Path | None = None) -> None:
    """Raise when ``path`` is a shipped model: what writes into a run works on a copy."""
    name = shipped_name(path, root)
    if name is None:
        return
    raise RunDirError(
        f"{name}: a shipped model is never changed; work on a copy of it with --into DIR "
        f"(e.g. 'bonefrac evaluate {name} --into runs/{name} ...'), or in Python "
        f"bonefrac.rundir.copy_run('{name}', DIR)"
    )


def copy_run(run: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy the run (a path or a shipped name) to ``dest``, without its checkpoints; ``dest``
    must not exist or be empty. Written into a temporary sibling, then renamed into place."""
    src = resolve_run(run)
    if not (src / "model.json").is_file():
        raise RunDirError(
            f"{src}: not a run directory nor a shipped model (shipped: {names_line()})"
        )
    out = Path(dest)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(
            f"{out}: already exists and is not empty; pass it as RUN to keep working on it, or "
            "choose another --into folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*_NOT_COPIED))
        for p in tmp.rglob("*"):  # package data may be read-only: the copy is the user's
            p.chmod(p.stat().st_mode | 0o600 | (0o100 if p.is_dir() else 0))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
