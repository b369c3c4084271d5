"""autoprompt-search: find where and how to prompt-tune a frozen transformer.

`from autoprompt_search import search, resume, train, load` is the Python API (`api.py`); it is imported on
first use, so `import autoprompt_search` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Predictor", "SearchResult", "__version__", "load", "resume", "search", "train"]


def __getattr__(name: str) -> Any:
    if name in ("search", "resume", "train", "load", "Predictor", "SearchResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'autoprompt_search' has no attribute {name!r}")
