"""Search studies on Ray: Optuna inside Ray Tune, each trial a Ray Train run."""

from .options import Objective, StudyOptions
from .runner import StudyRun, resume_study, run_study, study_rows

__all__ = ["Objective", "StudyOptions", "StudyRun", "resume_study", "run_study", "study_rows"]
