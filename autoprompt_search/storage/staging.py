"""Replace a directory without ever losing the old one before the new one is whole.

`staged_directory`: build the new directory beside its destination, then swap it in.
`replacing_directory`: for work that must write in place (a study: Ray and Optuna keep its path),
move the old directory aside when the work starts, remove it when the work ends, and put it back
if the work fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autoprompt_search.errors import ConfigError

STUDY_FILE = "study.json"  # what marks a study directory (study/options.py writes it)


def _aside(out: Path) -> Path:
    return out.parent / f".{out.name}.replaced-{uuid.uuid4().hex[:8]}"


@contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield an empty sibling of `out`; if the block succeeds it replaces `out`, otherwise it vanishes
    and `out` is untouched. The old `out` is moved aside before the swap and removed after it, so a
    crash between the two leaves it on disk rather than neither."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out.parent))
    try:
        yield staging
        readable_by_group(staging)
        aside = _aside(out) if out.exists() else None
        if aside is not None:
            out.rename(aside)
        try:
            staging.rename(out)
        except OSError:
            if aside is not None:
                aside.rename(out)
            raise
        if aside is not None:
            shutil.rmtree(aside)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def readable_by_group(root: Path) -> None:
    """Give a staged tree the modes a plain mkdir and open would (0755/0644 under a 022 umask):
    mkdtemp makes 0700 and some writers 0600, which hid exports from the user's group."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def replacing_directory(out: Path) -> Iterator[None]:
    """Make way for a new `out` written in place: an existing `out` is moved aside (same parent, so
    a rename), removed when the block ends normally, and put back if the block raises (what the
    block wrote is removed then)."""
    aside = _aside(out) if out.exists() else None
    if aside is not None:
        out.rename(aside)
    try:
        yield
    except BaseException:
        if aside is not None:
            if out.exists():
                shutil.rmtree(out)
            aside.rename(out)
        raise
    if aside is not None:
        shutil.rmtree(aside)


def refuse_study_dir(out: Path, option: str) -> None:
    """A directory to be replaced must not be, or directly hold, a study: `--overwrite` of an export,
    report or run is never a way to lose a study."""
    if not out.is_dir():
        return
    studies = [out] if (out / STUDY_FILE).is_file() else [c for c in out.iterdir() if (c / STUDY_FILE).is_file()]
    if studies:
        raise ConfigError(
            f"{option}: {str(out)!r} holds the study {str(studies[0])!r}, which replacing it would delete; "
            f"choose another {option}"
        )
