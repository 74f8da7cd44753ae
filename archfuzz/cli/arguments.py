"""argparse pieces every command shares: the parser whose error is one line, and the argument types
(``type=``) that refuse a bad value before any work starts (argparse then exits 2 naming the argument)."""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

SEED_LIMIT = 2**32  # numpy's seeding limit; auto-round and torch accept it too


class Parser(argparse.ArgumentParser):
    """argparse with its error as ONE line on stderr (``archfuzz verify: error: argument ...``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(low: int, what: str):
    """An integer ``>= low``; ``what`` names it in the error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected {what} (an integer >= {low}), got {text!r}")
        return value
    return parse


def seed(text: str) -> int:
    """A seed in ``[0, 2**32)``."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a seed, an integer in [0, 2**32), got {text!r}")
    return value


def float_in(low: float, strict: bool, what: str):
    """A finite number ``> low`` (``strict``) or ``>= low``; ``what`` names it in the error."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or strict and value == low:
            raise argparse.ArgumentTypeError(f"expected {what} (a finite number {'>' if strict else '>='} {low:g}), "
                                             f"got {text!r}")
        return value
    return parse


_UNITS = {"": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def byte_count(text: str) -> int:
    """A positive number of bytes: ``4294967296`` or ``4GiB`` (KiB, MiB, GiB, TiB)."""
    m = re.fullmatch(r"\s*(\d+)\s*(KiB|MiB|GiB|TiB)?\s*", text)
    value = int(m.group(1)) * _UNITS[m.group(2) or ""] if m else 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes (e.g. 4294967296 or 4GiB), "
                                         f"got {text!r}")
    return value


def key_value(text: str) -> str:
    """``KEY=VALUE`` with a non-blank key (the value is parsed later, by :func:`archfuzz.cli.checks.key_values`)."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def out_dir(text: str) -> str:
    """A folder to write into: an existing folder, or a new one whose nearest existing parent is a
    writable folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got an empty path")
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"folder {text!r} is not writable")
        return text
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot create folder {text!r}: {str(parent)!r} is not a writable folder")
    return text


def any_path(text: str) -> str:
    """Any path but the empty one (``Path("")`` would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty one")
    return text


def existing_dir(text: str) -> str:
    """An existing folder."""
    if not text.strip() or not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing folder")
    return text


def readable_file(text: str) -> str:
    """An existing, readable file."""
    path = Path(text)
    if not text.strip() or not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"file {text!r} is not readable")
    return text


def checkpoint(text: str) -> str:
    """``default`` or an existing path (what it holds is checked by the loader, also before any work)."""
    if text != "default" and (not text.strip() or not Path(text).exists()):
        raise argparse.ArgumentTypeError(f"expected 'default' or an existing checkpoint path, got {text!r}")
    return text
