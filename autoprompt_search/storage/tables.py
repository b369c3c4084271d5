"""The parquet tables this tool writes and reads back (a study's trials.parquet, a comparison's
runs.parquet): written atomically, read with a one-line error when the file is corrupt."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from autoprompt_search.errors import ConfigError


def write_table(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    """`rows` as the parquet table at `path`; readers never see half a file."""
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_table(path: Path, what: str, fix: str) -> list[dict[str, Any]]:
    """The rows of the parquet table at `path`; a corrupt one is "<what>: <path> is not a readable
    parquet table (<why>); <fix>"."""
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(
            f"{what}: {path} is not a readable parquet table ({str(exc).splitlines()[0][:120]}); {fix}"
        ) from exc
