"""optuna-dashboard over a study's own Optuna journal: history, parameters, intermediate values
and the user attributes the searchers write (the Tune trial id that names the `trials.parquet`
row, the method, the trainable parameters)."""

from __future__ import annotations

from pathlib import Path

from autoprompt_search.errors import ConfigError
from autoprompt_search.study.cluster import LOOPBACK_HOSTS
from autoprompt_search.study.journal import OPTUNA_FILE, journal_storage, open_study
from autoprompt_search.study.options import StudyOptions


def journal_of(study_dir: str | Path) -> Path:
    """The study's Optuna journal; ConfigError when the directory is not a study or it has not run."""
    study_dir = Path(study_dir)
    options = StudyOptions.load(study_dir)  # a one-line error for what is not a study
    journal = study_dir / OPTUNA_FILE
    if not journal.is_file():
        raise ConfigError(f"dashboard: {str(study_dir)!r} has no {OPTUNA_FILE} yet; start or resume the study first")
    open_study(str(journal), options.name)  # a corrupt journal fails here, not inside the server
    return journal


def optuna_dashboard_warning(host: str, port: int) -> str | None:
    """The risk of a dashboard reachable beyond this machine, or None when it stays on loopback."""
    if host in LOOPBACK_HOSTS:
        return None
    return (
        f"warning: optuna-dashboard listens on {host}:{port}: anyone who can reach that port can read the "
        f"study and write notes and trial states into its journal (no login). Prefer an SSH tunnel "
        f"(ssh -L {port}:127.0.0.1:{port}) and drop --host."
    )


def serve(study_dir: str | Path, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run optuna-dashboard on the study's journal until interrupted (it reads what is there, so
    it follows a running study)."""
    from optuna_dashboard import run_server

    run_server(journal_storage(journal_of(study_dir)), host=host, port=port)
