"""Checks several commands make before any work starts: each raises :class:`fuzz.errors.BadInput`, which
``main`` prints as one line on stderr with exit 2.  Also the defaults they share (dtype by name, the corpus
folder, the size guard's limit)."""

from __future__ import annotations

import ast

import torch

from fuzz.errors import BadInput

SIZE_HELP = ("size guard: refuse a layout whose parameters take more bytes than this (e.g. 4GiB) before "
             "anything is allocated (default 4 GiB, or $ARCHFUZZ_MAX_PARAM_BYTES)")


def key_values(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as a dict, values parsed as Python literals (else kept as strings)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"expected KEY=VALUE, got {item!r}")
        if key in out:
            raise BadInput(f"{key!r} given twice ({key}={out[key]!r} and {item!r})")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def unique(flag: str, values: list[str] | None) -> None:
    """Refuse a repeatable ``flag`` given the same value twice."""
    seen = set()
    for v in values or []:
        if v in seen:
            raise BadInput(f"{flag} {v!r} given twice")
        seen.add(v)


def resolve_transform(name: str, options: dict | None = None):
    """The transform ``name`` with ``options`` (names and types checked against its signature)."""
    from verifier.registry import resolve
    return resolve(name, **(options or {}))


def dtype(name: str) -> torch.dtype:
    """The oracle dtype named on the command line (``verifier.tolerance.DTYPES``)."""
    from verifier.tolerance import DTYPE_BY_NAME
    return DTYPE_BY_NAME[name]


def corpus_root():
    """The default corpus folder (``verifier.corpus.DEFAULT_ROOT``)."""
    from verifier.corpus import DEFAULT_ROOT
    return DEFAULT_ROOT


def size_limit(args) -> int:
    """``--max-param-bytes``, else the materializer's default (4 GiB or ``$ARCHFUZZ_MAX_PARAM_BYTES``)."""
    from fuzz.materialize import max_param_bytes_default
    return args.max_param_bytes if args.max_param_bytes is not None else max_param_bytes_default()


def load_layout(flag: str, path: str, dtype: torch.dtype, limit: int):
    """The layout at ``path``, malformed JSON and the size guard checked before anything is allocated."""
    from fuzz import Layout
    from fuzz.materialize import check_size
    layout = Layout.load(path)
    try:
        check_size(layout, dtype, limit)
    except BadInput as exc:
        raise BadInput(f"{flag}{path}: {exc}") from None
    return layout
