"""A study's Optuna journal: where it is (also after the study moved), opening it as Optuna storage."""

from __future__ import annotations

import json
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from autoprompt_search.errors import ConfigError

OPTUNA_FILE = "optuna.journal"  # the Optuna study (sampler history, optuna-dashboard reads it)


# Set while a study resumes: what Tune restores from its saved state (the searcher, the results
# recorder) holds the paths of where the study first ran; a moved or copied study must go on with
# its own files.
RESUMED_STUDY: ContextVar[Path | None] = ContextVar("resumed_study", default=None)


def current_study_dir(stored: str | Path) -> Path:
    """A study directory kept in Tune's saved state: the resumed study's own, else `stored`."""
    return RESUMED_STUDY.get() or Path(stored)


def study_journal(stored: str | Path) -> Path:
    """The Optuna journal a searcher opens (see `current_study_dir`)."""
    return current_study_dir(Path(stored).parent) / OPTUNA_FILE


def journal_storage(path: str | Path) -> Any:
    """Optuna's storage over a study's journal file (the sampler, the dashboard and reports read it)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def open_study(storage_path: str, name: str, sampler: Any = None, pruner: Any = None, directions: Any = None) -> Any:
    """The study's Optuna study over its journal file (created when `directions` is given); a
    journal that cannot be read, or holds no study of that name, is a one-line ConfigError."""
    import optuna

    try:
        storage = journal_storage(storage_path)
        if directions is not None:
            return optuna.create_study(
                study_name=name, storage=storage, sampler=sampler, pruner=pruner, directions=directions,
                load_if_exists=True,
            )  # fmt: skip
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        why = "not a readable Optuna journal" if not isinstance(exc, KeyError) else f"no Optuna study {name!r} in it"
        raise ConfigError(f"study: {storage_path}: {why}; the study directory is corrupt") from exc
