"""Which file holds which environment, when a corpus spans several files.

A procedural corpus is traced in chunks (one file per run of scenes), and the
experiments and `csipos train meml` name environments by shell-style patterns
(``proc/*``); this resolves names and patterns against a list of files in one
place, so every caller agrees on the order and on which file wins a duplicate.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path

from training.data.fingerprints import list_environments


def is_pattern(name: str) -> bool:
    return bool(set(name) & set("*?["))


def environments_in(files: Sequence[Path]) -> dict[str, Path]:
    """Every environment of the files, each with the first file that holds it."""
    present: dict[str, Path] = {}
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such fingerprint file")
        for env in list_environments(path):
            present.setdefault(env, Path(path))
    return present


def match_environments(
    present: dict[str, Path], patterns: Sequence[str], *, what: str = "environment"
) -> dict[str, Path]:
    """Names and shell-style patterns resolved against ``present``, in pattern order.

    A name or pattern that matches nothing is an error naming what the files hold,
    so a typo is a one-line fix rather than a silently smaller corpus.
    """
    out: dict[str, Path] = {}
    for part in patterns:
        matched = (
            [e for e in present if fnmatch.fnmatchcase(e, part)]
            if is_pattern(part)
            else [part]
            if part in present
            else []
        )
        if not matched:
            shown = sorted(present)
            more = f" (+{len(shown) - 20} more)" if len(shown) > 20 else ""
            raise ValueError(
                f"{what} {part!r} matches no environment; the files hold {shown[:20]}{more}"
            )
        for env in matched:
            out.setdefault(env, present[env])
    return out
