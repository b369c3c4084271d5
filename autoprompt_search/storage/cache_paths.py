"""Where autoprompt-search keeps its disk caches: $AUTOPROMPT_CACHE, else ~/.cache/autoprompt-search."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AUTOPROMPT_CACHE"


def cache_dir(kind: str) -> Path:
    """The directory of one cache: `tokens` (tokenised splits) or `prefix` (frozen-prefix states)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "autoprompt-search")
    return Path(root) / kind
