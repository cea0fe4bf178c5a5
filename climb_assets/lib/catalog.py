"""The analyst catalog: a DuckDB file holding only views over the pipeline's Parquet outputs.

The file is rebuilt in a temporary file and renamed over the old one, so the pipeline never opens
the live catalog for writing: analysts can keep it open read-only (Python `duckdb` or the CLI)
while a run goes on, and views read the Parquet files, which are themselves replaced atomically.

On an `s3://` root the views name `s3://` files. DuckDB's own S3 support (the httpfs extension)
downloads itself at run time, so instead an fsspec S3 filesystem is registered on the connection
(`con.register_filesystem(s3fs.S3FileSystem(...))`), which reads the files offline through the
same client the pipeline uses. Pass `filesystem` to every function here for that.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb


def parquet_source(pattern: str) -> str:
    """A `read_parquet` call over a glob, with the file name exposed as a column."""
    escaped = pattern.replace("'", "''")
    return f"read_parquet('{escaped}', union_by_name = true)"


def connect(db_path: str | Path, filesystem: Any | None = None) -> duckdb.DuckDBPyConnection:
    """Opens the catalog read-only; `filesystem` (fsspec) is registered for remote Parquet."""
    con = duckdb.connect(str(db_path), read_only=True)
    if filesystem is not None:
        con.register_filesystem(filesystem)
    return con


def build_catalog(
    db_path: str | Path, views: Mapping[str, str], filesystem: Any | None = None
) -> list[str]:
    """Writes a DuckDB file with one view per entry (`name -> SELECT ...`), atomically.

    Returns:
        The names of the views created.
    """
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.parent / f".{db_path.name}.{uuid.uuid4().hex}.tmp"
    try:
        con = duckdb.connect(str(tmp))
        if filesystem is not None:
            con.register_filesystem(filesystem)
        try:
            for name, select in views.items():
                con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {select}')
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, db_path)
    finally:
        for leftover in (tmp, Path(f"{tmp}.wal")):
            if leftover.exists():
                leftover.unlink()
    return list(views)


def query(db_path: str | Path, sql: str, filesystem: Any | None = None) -> list[tuple]:
    """Runs `sql` on the catalog opened read-only (what an analyst does)."""
    con = connect(db_path, filesystem)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
