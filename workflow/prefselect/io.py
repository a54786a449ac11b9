"""Atomic file outputs: every file or folder appears under its final name only once complete."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# The random part of the names that tempfile.mkstemp and mkdtemp give.
TEMPORARY_SUFFIX = re.compile(r"[a-z0-9_]{8}")


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary siblings that earlier writes of `path` left: a job killed inside its write (SIGKILL runs
    no `finally`) leaves one, and the job's rerun is the first to know that it is stale."""
    prefix = f".{path.name}."
    for stale in path.parent.glob(glob.escape(prefix) + "*"):
        if TEMPORARY_SUFFIX.fullmatch(stale.name[len(prefix) :]):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        tmp.chmod(0o755)  # mkdtemp makes folders private; outputs are meant to be shared
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        tmp.chmod(0o644)  # mkstemp makes files private; outputs are meant to be shared
    try:
        yield tmp
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write `df`; `metadata` goes into the file's key-value metadata (e.g. its provenance)."""
    with atomic_path(path) as tmp:
        if metadata is None:
            df.to_parquet(tmp, index=False)
            return
        table = pa.Table.from_pandas(df, preserve_index=False)
        pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata}), tmp)


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
