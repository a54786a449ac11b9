"""The export step: the pairs a selection keeps, as the user's own input rows, for any trainer."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import config_arg
from test_data import conv_row, good_row, sharegpt_row, tok_path, write_lines  # noqa: F401 (tok_path: a fixture)

from prefselect.cli import main
from prefselect.data import content_id, prepare

BAND = {"bands": {"lossdiff": [10, 90], "irm": [10, 90]}}
LIKE = {"kind": "random", "like": "band"}
FULL = {"kind": "full"}  # every training row, for the awkward ones


def awkward_jsonl(path: Path) -> str:
    """Standard rows as people write them: a byte-order mark, escapes and raw UTF-8, keys in any order, spaces,
    `1.50`, CRLF line ends, a blank line, a line that is no JSON, a duplicate, an unusable row, no final newline."""
    lines = []
    for i in range(1, 31):  # row 1 is a training row, so the full selection keeps the line with the mark
        row = {**good_row(i), "score": "1.50", "meta": {"b": i, "a": [1, 2]}}
        row["chosen"] += " café"
        text = json.dumps(row, ensure_ascii=i % 2 == 0, separators=(",", ":") if i % 3 else (", ", ": "))
        text = text.replace('"1.50"', "1.50")  # a float spelled as no JSON writer spells it
        if i % 5 == 0:
            text = (
                json.dumps(dict(reversed(list(json.loads(text).items()))), ensure_ascii=False).replace("1.5", "1.50")
                + "  \r"
            )
        lines.append(text.encode())
    lines[0] = codecs.BOM_UTF8 + lines[0]
    lines[7:7] = [b"", b"{not json", lines[3], json.dumps({**good_row(40), "chosen": "   "}).encode()]
    path.write_bytes(b"\n".join(lines))  # the last line without a newline
    return str(path)


def typed_parquet(path: Path) -> str:
    """Standard rows with an id column of their own (integers) and columns of parquet types."""
    rows = [{"id": 100 + i, **good_row(i), "weight": i / 4, "tags": list(range(i % 3))} for i in range(30)]
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("prompt", pa.string()),
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("weight", pa.float32()),
            ("tags", pa.list_(pa.int16())),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def conversational_jsonl(path: Path) -> str:
    return write_lines(path, [conv_row(i) for i in range(30)])


def sharegpt_json(path: Path) -> str:
    """ShareGPT-style rows (a JSON array, as LLaMA-Factory's data), with ids of their own."""
    rows = [{"id": f"s{i}", **sharegpt_row(i, history=i % 3, system=i % 4 == 0)} for i in range(30)]
    path.write_text(json.dumps(rows, indent=1))
    return str(path)


def input_rows(source: str) -> dict[str, bytes | dict]:
    """The input's rows by id in input order, the first of each id, read here without prefselect: the bytes of a
    JSON Lines row (no line end, no byte-order mark), else the record."""
    if source.endswith(".parquet"):
        records = pq.read_table(source).to_pylist()
    elif source.endswith(".json"):
        records = json.loads(Path(source).read_text())
    else:
        records = []
        for line in Path(source).read_bytes().split(b"\n"):
            line = line.rstrip(b"\r").removeprefix(codecs.BOM_UTF8)
            try:
                records.append((json.loads(line), line))
            except ValueError:
                pass  # blank, or no JSON: no row of the export
    rows: dict[str, bytes | dict] = {}
    for item in records:
        record, raw = item if isinstance(item, tuple) else (item, item)
        rows.setdefault(str(record["id"]) if "id" in record else content_id(record), raw)
    return rows


def select_and_export(tmp_path: Path, source: str, tok: str) -> dict[str, tuple[set, Path]]:
    """Prepare `source`, select with a band selector, one `like` it and `full` on made-up scores (in an order of
    their own), export each; each selector's kept ids and its export's stem."""
    data = tmp_path / "data"
    prepare(source, str(data), tokenizer=tok, max_length=64)
    train = pd.read_parquet(data / "train.parquet")
    rng = np.random.default_rng(0)
    scores = pd.DataFrame(
        {"id": train["id"], "lossdiff": rng.normal(size=len(train)), "irm": rng.normal(size=len(train))}
    ).sample(frac=1, random_state=1)
    scores.to_parquet(tmp_path / "scores.parquet")
    done = {}
    for name, spec in (("band", BAND), ("like", LIKE), ("full", FULL)):
        selection = tmp_path / f"selection/{name}.parquet"
        # As the workflow passes it: an empty --like means none.
        like = ["--like", *([str(tmp_path / "selection/band.parquet")] if "like" in spec else [])]
        main(
            [
                "select",
                "--selector",
                name,
                *config_arg(selectors={"band": BAND, name: spec}),
                "--scores",
                str(tmp_path / "scores.parquet"),
                "--data",
                str(data / "train.parquet"),
                *like,
                "--out",
                str(selection),
            ]
        )
        out = tmp_path / f"selected/{name}"
        main(
            [
                "export",
                "--selection",
                str(selection),
                "--source",
                source,
                "--out-jsonl",
                f"{out}.jsonl",
                "--out-parquet",
                f"{out}.parquet",
            ]
        )
        kept = pd.read_parquet(selection)
        done[name] = set(kept.loc[kept["selected"], "id"]), out
    return done


@pytest.mark.parametrize("make", [awkward_jsonl, typed_parquet, conversational_jsonl, sharegpt_json])
def test_the_export_holds_the_input_rows_of_the_kept_ids_in_input_order(tmp_path, tok_path, make):
    suffix = {"typed_parquet": ".parquet", "sharegpt_json": ".json"}.get(make.__name__, ".jsonl")
    source = make(tmp_path / f"input{suffix}")
    rows = input_rows(source)
    for name, (kept, out) in select_and_export(tmp_path, source, tok_path).items():
        expected = {row_id: raw for row_id, raw in rows.items() if row_id in kept}
        assert len(expected) == len(kept) and 0 < len(kept) < len(rows), name
        lines = (out.parent / f"{out.name}.jsonl").read_bytes().split(b"\n")
        assert lines.pop() == b""  # every line ends with a newline
        table = pq.read_table(f"{out}.parquet")
        assert [str(i) for i in table.column("id").to_pylist()] == list(expected), name  # input order
        if make is awkward_jsonl and name == "full":
            assert next(iter(rows)) in kept  # the line with the byte-order mark
        if suffix == ".jsonl":  # byte for byte, the id put first where the input has none
            for line, (row_id, raw) in zip(lines, expected.items(), strict=True):
                prefix = f'{{"id": "{row_id}", '.encode()
                assert line.startswith(prefix) and b"{" + line[len(prefix) :] == raw, name
            assert table.to_pylist() == [{"id": i, **json.loads(raw)} for i, raw in expected.items()], name
        else:
            assert [json.loads(line) for line in lines] == list(expected.values()), name
            if suffix == ".parquet":  # the input's own columns and types
                source_table = pq.read_table(source)
                assert table.schema.remove_metadata() == source_table.schema.remove_metadata()
                assert table.to_pylist() == list(expected.values())
            else:
                assert table.to_pylist() == list(expected.values()), name


def test_a_kept_id_the_source_lacks_is_an_error_naming_it(tmp_path, tok_path, capsys):
    source = conversational_jsonl(tmp_path / "input.jsonl")
    selection = tmp_path / "selection.parquet"
    pd.DataFrame({"id": [content_id(conv_row(0)), "gone"], "selected": [True, True]}).to_parquet(selection)
    with pytest.raises(SystemExit):
        main(
            [
                "export",
                "--selection",
                str(selection),
                "--source",
                source,
                "--out-jsonl",
                str(tmp_path / "o.jsonl"),
                "--out-parquet",
                str(tmp_path / "o.parquet"),
            ]
        )
    err = capsys.readouterr().err
    assert "keeps id 'gone'" in err and source in err
    assert not (tmp_path / "o.jsonl").exists()
