"""autoprompt-search: find where and how to prompt-tune a frozen transformer.

The Python API: `search` and `resume` run studies (`study/runner.py`), `train` and `load` one
configuration (`runs.py`); every error a user can fix is an `AutopromptError` (`ConfigError` for
bad input, `TrainingError` for a run that cannot go on).
"""

__version__ = "0.1.0"  # first: modules below read it while the package initialises

from autoprompt_search.errors import AutopromptError, ConfigError, TrainingError
from autoprompt_search.runs import Predictor, load, train
from autoprompt_search.study.runner import SearchResult, resume, search

__all__ = [
    "AutopromptError",
    "ConfigError",
    "Predictor",
    "SearchResult",
    "TrainingError",
    "__version__",
    "load",
    "resume",
    "search",
    "train",
]
