"""Lossless file paths in a text CSV: the path's bytes as UTF-8, unsafe bytes as ``%XX``.

A POSIX file name is any bytes but ``/`` and NUL: it may be invalid UTF-8 or hold a newline.
``encode_path`` writes the path's bytes (``os.fsencode``) as text, unchanged where they are
printable UTF-8, and percent-encodes (``%XX`` per byte, upper-case hex) ``%`` itself, control
characters (C0, DEL, C1), the Unicode line/paragraph separators and every byte that is not
valid UTF-8. So ordinary paths read as themselves, every row stays on one line, and
``decode_path`` (``urllib.parse.unquote_to_bytes`` then ``os.fsdecode``) gives back the exact
path, non-UTF-8 bytes included (as surrogate escapes, as Python's own ``os`` functions do).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote_to_bytes

#: ``%``, C0 controls, DEL, C1 controls, U+2028/U+2029, and surrogate-escaped raw bytes.
_UNSAFE = re.compile("[%\x00-\x1f\x7f-\x9f\u2028\u2029\udc80-\udcff]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if "\udc80" <= ch <= "\udcff":  # a byte that is not valid UTF-8 (surrogateescape)
        return f"%{ord(ch) - 0xDC00:02X}"
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8"))


def encode_path(path: str | os.PathLike[str] | bytes) -> str:
    """The CSV text of ``path``: printable UTF-8 as is, anything else as ``%XX`` bytes."""
    text = os.fsdecode(os.fsencode(path))
    return _UNSAFE.sub(_escape, text)


def decode_path(text: str) -> Path:
    """Inverse of :func:`encode_path`."""
    return Path(os.fsdecode(unquote_to_bytes(text)))


def printable(text: str) -> str:
    """``text`` encodable as UTF-8: raw bytes of undecodable file names shown as ``\\xNN``."""
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_text(text: str) -> str:
    """:func:`printable` ``text`` on one line (for a CSV cell)."""
    return printable(" ".join(str(text).split()))
