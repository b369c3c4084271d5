"""The search spaces shipped with autoprompt-search, as package data.

The YAML files stay in the project's top-level `search_spaces/` (where users read and copy
them) and install with the package, so `--space all` works after a plain `pip install`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped() -> dict[str, Path]:
    """Shipped space name -> its YAML file."""
    root = Path(str(files(__name__)))
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}
