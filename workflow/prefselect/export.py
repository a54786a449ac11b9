"""The `export` step: a selector's kept pairs as the user's own input rows, for any trainer.

prefselect trains on the prompt/chosen/rejected strings it renders; a team that trains with a stack of its own
(OpenRLHF, LLaMA-Factory, axolotl, a TRL script) wants its own rows back, in its own format (TRL standard or
conversational, ShareGPT-style), so that whatever reads its input reads the export. Each kept row is given as it was
read, plus its `id`, in input order. Training pairs are rows of `data.source` only (prepare takes the validation,
dev and test pairs from files of their own or from the source's other hash ranges), and prepare reads the source
first, so reading it again and giving its rows ids as prepare does finds the row of every kept id.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import provenance
from .data import Row, assign_ids, read_rows
from .io import atomic_path


def kept_rows(source: str, split: str, selection: pd.DataFrame, name: str) -> list[Row]:
    """The source rows of the ids that `selection` (named `name` in errors) keeps, in input order."""
    if not {"id", "selected"} <= set(selection.columns):
        raise ValueError(f"selection {name}: needs the columns id and selected, has {list(selection.columns)}")
    kept = set(selection.loc[selection["selected"], "id"])
    if not kept:
        raise ValueError(f"selection {name}: keeps no pairs")
    rows = read_rows(source, split)
    assign_ids(rows)
    found = [r for r in rows if r.ok and r.id in kept]  # one row per id: assign_ids quarantines duplicates
    missing = kept - {r.id for r in found}
    if missing:
        raise ValueError(
            f"selection {name} keeps id {min(missing)!r} (and {len(missing) - 1} more) that data "
            f"source {source!r} does not hold: the source changed after prepare read it; run "
            "prepare and the selection again"
        )
    return found


def _with_id(row: Row) -> dict:
    """The record, with prefselect's id first where the input has no id column of its own (every kept row of a
    file with an id column has one)."""
    return row.raw if "id" in row.raw else {"id": row.id, **row.raw}


def _jsonl_lines(path: Path, rows: list[Row]) -> list[bytes]:
    """Each row's line as it is in the file, without its line ending or a byte-order mark; where the input has no
    id column, `"id": "<id>", ` opens the object, so the rest of the line stays byte for byte the input's."""
    with open(path, "rb") as f:
        lines = f.readlines()  # split as data.read_rows splits them, so `Row.line` numbers them
    out = []
    for row in rows:
        line = lines[row.line - 1].rstrip(b"\r\n").removeprefix(codecs.BOM_UTF8)
        if "id" not in row.raw:
            start = line.index(b"{") + 1  # the line parsed as an object, so its first brace opens it
            line = line[:start] + f'"id": {json.dumps(row.id)}, '.encode() + line[start:]
        out.append(line)
    return out


def _table(source: str, rows: list[Row]) -> pa.Table:
    """The rows as one table: a parquet source's own rows and column types, or else the records' inferred ones."""
    if Path(source).suffix.lower() == ".parquet":
        table = pq.read_table(source).take([r.index for r in rows])
        return (
            table
            if "id" in table.column_names
            else table.add_column(0, "id", pa.array([r.id for r in rows], pa.string()))
        )
    try:
        return pa.Table.from_struct_array(pa.array([_with_id(r) for r in rows]))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(
            f"data source {source!r}: its kept rows do not fit one parquet table (a column of mixed types?): {err}"
        ) from err


def export(source: str, split: str, selection: str, out_jsonl: str, out_parquet: str) -> dict:
    """Write the rows of `source` (split `split` of a hub id or dataset folder) that `selection` keeps as JSON Lines
    and as parquet, the latter with the selection's provenance; return what was written."""
    rows = kept_rows(source, split, pd.read_parquet(selection), selection)
    if rows[0].line is not None:  # read from JSON Lines
        lines = _jsonl_lines(Path(source), rows)
    else:
        lines = [json.dumps(_with_id(r), ensure_ascii=False, default=str).encode() for r in rows]
    with atomic_path(out_jsonl) as tmp:
        tmp.write_bytes(b"".join(line + b"\n" for line in lines))
    table = _table(source, rows)
    record = provenance.read(selection)  # the selector's rule and seed, what it read
    if record:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **provenance.metadata(record)})
    with atomic_path(out_parquet) as tmp:
        pq.write_table(table, tmp)
    return {"selection": selection, "source": source, "kept": len(rows), "jsonl": out_jsonl, "parquet": out_parquet}
