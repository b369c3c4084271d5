"""autoprompt-search: find where and how to prompt-tune a frozen transformer.

The Python API: `search` and `resume` run studies (`study/runner.py`), `train` and `load` one
configuration (`runs.py`). Each is imported on first use, so `import autoprompt_search` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Predictor", "SearchResult", "__version__", "load", "resume", "search", "train"]


def __getattr__(name: str) -> Any:
    if name in ("search", "resume", "SearchResult"):
        from .study import runner

        return getattr(runner, name)
    if name in ("train", "load", "Predictor"):
        from . import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'autoprompt_search' has no attribute {name!r}")
