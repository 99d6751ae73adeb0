"""Shipped models: trained run directories that come with the package, found by name.

::

    src/bonefrac/shipped/
      aliases.json            {"default": "lite0-loc-1"}: names that stand for a shipped model
      lite0-loc-1/            a complete run directory (model.json, fp16 model.safetensors,
        MODEL_CARD.md           ood.safetensors, metrics.json, predictions/, config.yaml)
      .staging/<name>/        a model being packaged (:func:`stage`), renamed into place
                                when complete (:func:`place`); never a shipped model

A RUN argument that is not a path on disk but a shipped model's name (``default``, or a
versioned name such as ``lite0-loc-1``) opens that folder (:func:`resolve_run`); an existing
path always wins, so a local folder called ``default`` is still read as a run directory. A
shipped model is read-only (:func:`refuse_write`): commands that write into a run work on a
copy (:func:`copy_run`), so the installed package, and the SHA-256 its weights were checked
against, never change.
"""

from __future__ import annotations

import contextlib
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
#: The cards' dataset and licence text (data, not code: bonefrac.evaluation.model_card reads
#: it); the package's own file, wherever tests point SHIPPED_ROOT.
CARD_TEXT_FILE = SHIPPED_ROOT / "card_text.json"
#: What a copy of a run leaves behind: Lightning's resume state is not part of a model.
_NOT_COPIED = ("checkpoints",)
#: The folder (inside a shipped root) where a model is built before it is placed.
STAGING = ".staging"

# Every lookup reads SHIPPED_ROOT when called, so tests can point it at a folder of their own.


def aliases() -> dict[str, str]:
    """``{alias: shipped folder name}`` (``{}`` when no aliases file)."""
    path = SHIPPED_ROOT / ALIASES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path}: unreadable ({exc}); reinstall bonefrac") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise RunDirError(f"{path}: expected {{alias: model name}}; reinstall bonefrac")
    return {str(k): v for k, v in data.items()}


def shipped_models() -> dict[str, Path]:
    """``{name: folder}`` of every shipped run directory (a folder with model.json; hidden
    folders, such as :data:`STAGING` or a half-built model, are not package data)."""
    if not SHIPPED_ROOT.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(SHIPPED_ROOT.iterdir())
        if not p.name.startswith(".") and (p / "model.json").is_file()
    }


def shipped_path(name: str) -> Path | None:
    """The folder of the shipped model ``name`` (an alias or a folder name), else None."""
    return shipped_models().get(aliases().get(name, name))


def names_line() -> str:
    """The shipped names, for messages: ``default (lite0-loc-1), lite0-loc-1`` or ``none``."""
    alias = [f"{a} ({t})" for a, t in aliases().items()]
    return ", ".join([*alias, *shipped_models()]) or "none"


def resolve_run(run: str | os.PathLike[str]) -> Path:
    """``run`` as given when it exists on disk, else the shipped model of that name, else
    ``run`` unchanged (opening it then says it is neither)."""
    path = Path(run)
    if path.exists() or len(path.parts) != 1:
        return path
    return shipped_path(str(run)) or path


def shipped_name(path: str | os.PathLike[str]) -> str | None:
    """The shipped folder name when ``path`` is a shipped model's folder, else None (a model
    being built under :data:`STAGING` is not one yet: its deploy fits write into it)."""
    try:
        here = Path(path).resolve()
    except OSError:
        return None
    models = shipped_models()
    return here.name if here.name in models and models[here.name].resolve() == here else None


def refuse_write(path: str | os.PathLike[str]) -> None:
    """Raise when ``path`` is a shipped model: what writes into a run works on a copy."""
    name = shipped_name(path)
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


# --- packaging a model: built in a staging folder, then placed ----------------------------
def stage(root: Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """``(final, stage)`` for building the shipped model ``name`` in ``root``: ``final`` is
    where it goes (refused when it exists, unless ``force``), ``stage`` a fresh folder under
    ``root/.staging`` to build it in (not yet a shipped model: it may be written)."""
    final = root / name
    if final.exists() and not force:
        raise RunDirError(f"{final}: a shipped model of that name exists; pass --force")
    folder = root / STAGING / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return final, folder


def place(stage_folder: Path, final: Path, *, default: bool) -> Path:
    """Move a complete staged model to ``final`` (replacing an older one of that name) and,
    when ``default``, make it the :data:`DEFAULT_NAME` model of its root."""
    from bonefrac.fileio import write_json

    if final.exists():
        shutil.rmtree(final)
    stage_folder.rename(final)
    with contextlib.suppress(OSError):  # the staging folder goes once nothing is built in it
        stage_folder.parent.rmdir()
    if default:
        write_json(final.parent / ALIASES_FILE, {DEFAULT_NAME: final.name})
    return final
