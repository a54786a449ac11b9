"""The `prepare` step: read preference pairs, give each a stable id, quarantine the unusable ones, split
train/val(/test).

Every input row ends up in exactly one place: `train.parquet`, `val.parquet`, `test.parquet` or `quarantine.jsonl`
(with a reason), and `report.json` counts them. Conversational and ShareGPT rows are rendered to strings with the
tokenizer's chat template, as TRL's DPOTrainer renders conversational pairs, so every later step sees plain
prompt/chosen/rejected text.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase
from trl.data_utils import extract_prompt

from .io import write_json, write_jsonl, write_parquet
from .models import load_tokenizer

log = logging.getLogger(__name__)

FIELDS = ("prompt", "chosen", "rejected")
REASONS = (
    "invalid_json",
    "missing_field",
    "not_a_string",
    "empty_field",
    "identical_completions",
    "duplicate_id",
    "prompt_too_long",
    "mixed_format",
    "chat_template_mismatch",
    "invalid_roles",
)
# ShareGPT-style pairs (LLaMA-Factory's `ranking` data, e.g. its dpo_en_demo.json): the prompt turns under
# `conversations`, and `chosen`/`rejected` as single {from, value} turns. Roles map to the chat template's.
SHAREGPT = "conversations"
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
FORMATS = ("standard", "conversational", "sharegpt")  # a tie in `_decide_format` goes to the earlier
Pair = dict[str, Any]


class _Reject(Exception):
    """A row cannot be used: `reason` is one of REASONS, the message is the detail for a human."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(eq=False)
class Row:
    file: str  # the source or validation argument it came from
    index: int  # 0-based position in that file
    raw: Any  # the parsed record, or the raw text of a line that did not parse
    line: int | None = None  # 1-based line of a JSON Lines row, for an export that copies it byte for byte
    id: str | None = None
    reason: str | None = None
    detail: str = ""
    pair: Pair | None = None  # rendered prompt/chosen/rejected strings, once usable

    @property
    def ok(self) -> bool:
        return self.reason is None

    def quarantine(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail


# Reading ---------------------------------------------------------------------------------------------------------


def _parse_line(line: bytes, lineno: int, file: str, index: int) -> Row:
    try:
        record = json.loads(line.decode("utf-8-sig"))
        if not isinstance(record, dict):
            raise ValueError(f"a JSON {type(record).__name__}, not an object")
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        return Row(file, index, text, reason="invalid_json", detail=f"line {lineno}: {err}")
    return Row(file, index, record, line=lineno)


def _read_jsonl(path: Path, file: str) -> list[Row]:
    rows: list[Row] = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():  # blank lines are not rows, as for pandas and datasets
                rows.append(_parse_line(line, lineno, file, len(rows)))
    return rows


def _read_json(path: Path, file: str) -> list[Row]:
    try:
        records = json.loads(path.read_bytes())
    except ValueError:
        records = None
    if not isinstance(records, list):  # JSON Lines content under a .json name
        return _read_jsonl(path, file)
    not_object = {"reason": "invalid_json", "detail": "the record is not a JSON object"}
    return [Row(file, i, r, **({} if isinstance(r, dict) else not_object)) for i, r in enumerate(records)]


def _read_parquet(path: Path, file: str) -> list[Row]:
    return [Row(file, i, r) for i, r in enumerate(pq.read_table(path).to_pylist())]


READERS: dict[str, Callable[[Path, str], list[Row]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
}


def dataset_name(source: str, split: str) -> str:
    """How rows, the report and the quarantine name a source: a local file by its path, a dataset by id and split."""
    return source if Path(source).suffix.lower() in READERS else f"{source}:{split}"


def _load_hub(source: str, split: str) -> list[Row]:
    """One split of a dataset folder, or of a hub dataset repository through the Hugging Face cache.

    The repository is fetched (or, with HF_HUB_OFFLINE=1, found in the cache) as a snapshot folder that `datasets`
    then reads like any local dataset folder, so a `hf download --repo-type dataset ...` made beforehand is all an
    offline machine needs, as for models.
    """
    try:
        folder = source if Path(source).is_dir() else huggingface_hub.snapshot_download(source, repo_type="dataset")
        records = datasets.load_dataset(folder, split=split).to_list()
    except Exception as err:  # offline, unknown id, no such split, ...: all mean this source cannot be read
        raise ValueError(
            f"data source {source!r}: not a local file, and loading split {split!r} from the hub failed: {err}"
        ) from err
    return [Row(dataset_name(source, split), i, r) for i, r in enumerate(records)]


def read_rows(source: str, split: str = "train") -> list[Row]:
    """Rows of a local .jsonl/.json/.parquet file, or else of split `split` of a dataset folder or hub id."""
    path = Path(source)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        if path.is_file():
            raise ValueError(f"data source {source!r}: unsupported file type (use .jsonl, .json or .parquet)")
        return _load_hub(source, split)
    if not path.is_file():
        raise FileNotFoundError(f"data source {source!r}: file not found")
    try:
        return reader(path, source)
    except (OSError, pa.ArrowException) as err:  # e.g. a truncated parquet file cannot be read row by row
        raise ValueError(f"data source {source!r}: cannot read the file: {err}") from err


# Ids and format ----------------------------------------------------------------------------------------------------


def content_id(record: dict) -> str:
    """First 16 hex digits of the sha256 of (prompt, chosen, rejected) as given: same content, same id.

    A ShareGPT row's prompt is its `conversations`, which then joins the hashed fields.
    """
    keys = FIELDS + ((SHAREGPT,) if SHAREGPT in record else ())
    blob = json.dumps([record.get(k) for k in keys], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def assign_ids(rows: list[Row]) -> None:
    """Give each parsed row its id; the first row with an id owns it, later ones are duplicates."""
    has_id = {f: any("id" in r.raw for r in rows if r.ok and r.file == f) for f in {r.file for r in rows}}
    owners: dict[str, Row] = {}
    for row in (r for r in rows if r.ok):
        if not has_id[row.file]:
            row.id = content_id(row.raw)
        elif row.raw.get("id") is None:
            row.quarantine("missing_field", "id is missing or null (the file has an id column)")
            continue
        else:
            row.id = str(row.raw["id"])
        owner = owners.setdefault(row.id, row)
        if owner is not row:
            same = "same content as" if not has_id[row.file] else f"id {row.id!r} already used by"
            row.quarantine("duplicate_id", f"{same} an earlier row: row {owner.index} of {owner.file}")


def _row_format(record: dict) -> str | None:
    values = [record.get(k) for k in FIELDS]
    if SHAREGPT in record or any(isinstance(v, dict) for v in values):
        return "sharegpt"
    if any(isinstance(v, list) for v in values):
        return "conversational"
    return "standard" if any(isinstance(v, str) for v in values) else None


def _decide_format(rows: list[Row]) -> str:
    """The format of the data; rows of another format are quarantined as `mixed_format`.

    Rendering is per format and TRL infers the format from the first row alone, so a mixed dataset would be
    mis-tokenized. A few rows of the other format are most likely an export glitch, so the majority of the
    parsed rows (ties: standard, then conversational) decides, which keeps the most data.
    """
    votes = {row: _row_format(row.raw) for row in rows if row.ok}
    counts = Counter(v for v in votes.values() if v)
    fmt = max(FORMATS, key=lambda f: (counts[f], -FORMATS.index(f)))
    for row, vote in votes.items():
        if vote not in (None, fmt):
            row.quarantine("mixed_format", f"a {vote} row; the data is {fmt} ({counts[fmt]} of {counts.total()} rows)")
    return fmt


# Validating and rendering ----------------------------------------------------------------------------------------


def _present(record: dict, key: str) -> Any:
    if record.get(key) is None:
        raise _Reject("missing_field", f"{key} is missing or null")
    return record[key]


def _check_usable(pair: Pair) -> None:
    for key, value in pair.items():
        contents = [value] if isinstance(value, str) else [m["content"] for m in value]
        if not "".join(contents).strip():
            raise _Reject("empty_field", f"{key} is empty or whitespace")
    if pair["chosen"] == pair["rejected"]:
        raise _Reject("identical_completions", "chosen and rejected are identical")


def _standard_pair(record: dict) -> Pair:
    pair = {key: _present(record, key) for key in FIELDS}
    for key, value in pair.items():
        if not isinstance(value, str):
            raise _Reject("not_a_string", f"{key} is a {type(value).__name__}, expected a string")
    _check_usable(pair)
    return pair


def _messages(record: dict, key: str) -> list[dict]:
    value = _present(record, key)
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        raise _Reject("not_a_string", f"{key} is not a list of {{role, content}} messages with string content")
    return value


def _conversational_pair(record: dict) -> Pair:
    chosen, rejected = _messages(record, "chosen"), _messages(record, "rejected")
    if record.get("prompt") is None or isinstance(record["prompt"], str):
        # Implicit prompt: chosen and rejected are whole conversations sharing the prompt turns. A string prompt
        # beside them is a copy of the user turn (e.g. ultrafeedback_binarized), as trl's maybe_extract_prompt assumes.
        _check_usable({"chosen": chosen, "rejected": rejected})  # extract_prompt fails on empty lists
        pair = extract_prompt({"chosen": chosen, "rejected": rejected})
    else:
        pair = {"prompt": _messages(record, "prompt"), "chosen": chosen, "rejected": rejected}
    _check_usable(pair)
    return pair


def _sharegpt_pair(record: dict) -> Pair:
    """A ShareGPT row as a TRL conversational pair: `conversations` → prompt, each answer → one assistant turn."""
    turns, chosen, rejected = (_present(record, key) for key in (SHAREGPT, "chosen", "rejected"))
    named = [(f"{SHAREGPT}[{i}]", t) for i, t in enumerate(turns)] if isinstance(turns, list) else [(SHAREGPT, turns)]
    named += [("chosen", chosen), ("rejected", rejected)]
    for key, turn in named:
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
            raise _Reject("not_a_string", f"{key} is not a {{from, value}} turn with a string value")
    for key, turn in named:
        if turn["from"] not in SHAREGPT_ROLES:
            raise _Reject("invalid_roles", f"{key} has role {turn['from']!r}; known roles: {', '.join(SHAREGPT_ROLES)}")
    prompt, chosen, rejected = (
        [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in ts] for ts in (turns, [chosen], [rejected])
    )
    if not prompt:
        raise _Reject("empty_field", f"{SHAREGPT} has no turns")
    if prompt[-1]["role"] != "user":
        raise _Reject("invalid_roles", f"{SHAREGPT} does not end with a user turn")
    for key, answer in (("chosen", chosen[0]), ("rejected", rejected[0])):
        if answer["role"] != "assistant":
            raise _Reject("invalid_roles", f"{key} is a {answer['role']} turn, not the assistant's")
    pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    _check_usable(pair)
    return pair


def _render(pair: Pair, tokenizer: PreTrainedTokenizerBase) -> Pair:
    """Prompt and completions as strings, rendered the way TRL's DPOTrainer tokenizes conversational pairs.

    A completion that the template ends with EOS and then whitespace (ChatML: `<|im_end|>\n`) is cut after the
    EOS: TRL appends EOS to a text completion that does not end with it, which would train a second one.
    """
    try:
        prompt = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=False)
        rendered = {"prompt": prompt}
        for key in ("chosen", "rejected"):
            full = tokenizer.apply_chat_template(pair["prompt"] + pair[key], tokenize=False)
            if not full.startswith(prompt):
                raise _Reject("chat_template_mismatch", f"prompt+{key} does not start with the rendered prompt")
            completion = full[len(prompt) :]
            ends_with_eos = tokenizer.eos_token and completion.rstrip().endswith(tokenizer.eos_token)
            rendered[key] = completion.rstrip() if ends_with_eos else completion
    except TemplateError as err:  # the template rejects this conversation (e.g. roles that do not alternate)
        raise _Reject("chat_template_mismatch", f"the chat template failed: {err}") from err
    return rendered


def _flag_long_prompts(rows: list[Row], tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
    """Quarantine rows whose prompt alone fills max_length: TRL drops them silently.

    The prompt is tokenized as TRL tokenizes the strings we write (`tokenizer(prompt)`, with special tokens),
    which is never shorter than TRL's own cut, so no row we keep is dropped later.
    """
    usable = [r for r in rows if r.ok]
    if not usable:
        return
    for row, ids in zip(usable, tokenizer([r.pair["prompt"] for r in usable])["input_ids"]):
        if len(ids) >= max_length:
            row.quarantine("prompt_too_long", f"the prompt has {len(ids)} tokens, max_length is {max_length}")


def _make_usable(rows: list[Row], fmt: str, tokenizer: PreTrainedTokenizerBase, name: str, max_length: int) -> None:
    if fmt != "standard" and not tokenizer.chat_template:
        raise ValueError(f"the data is {fmt}, but tokenizer {name!r} has no chat template to render it")
    to_messages = {"conversational": _conversational_pair, "sharegpt": _sharegpt_pair}.get(fmt)
    for row in (r for r in rows if r.ok):
        try:
            if fmt == "standard":
                row.pair = _standard_pair(row.raw)
            else:
                row.pair = _render(to_messages(row.raw), tokenizer)
        except _Reject as rejection:
            row.quarantine(rejection.reason, str(rejection))
    _flag_long_prompts(rows, tokenizer, max_length)


# Split, outputs ----------------------------------------------------------------------------------------------------


def hash_position(row_id: str, seed: int, salt: str = "") -> float:
    """Where a row lies in [0, 1), by a hash of (salt, seed, id): a row's place never depends on the other rows, so
    adding or reordering rows keeps it. Each use of it (splits, the warm-up's share) draws with a salt of its own."""
    digest = hashlib.sha256(f"{salt}{seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_val(row_id: str, seed: int, val_fraction: float) -> bool:
    """Whether a row lies in the lowest `val_fraction` of the splits' hash range (validation, then dev, rows; the
    highest share is the test rows)."""
    return hash_position(row_id, seed) < val_fraction


def _frame(rows: list[Row]) -> pd.DataFrame:
    passed = [{k: v for k, v in r.raw.items() if k not in ("id", SHAREGPT, *FIELDS)} for r in rows]
    return pd.DataFrame([{"id": r.id, **r.pair, **extra} for r, extra in zip(rows, passed)])


def _quarantine_line(row: Row) -> dict:
    return {
        "row": row.index,
        "file": row.file,
        "id": row.id,
        "reason": row.reason,
        "detail": row.detail,
        "raw": row.raw,
    }


def _quarantine_summary(rows: list[Row]) -> str:
    bad = [r for r in rows if not r.ok]
    if not bad:
        return "none quarantined"
    first = {r.reason: r for r in reversed(bad)}
    counts = Counter(r.reason for r in bad)
    return "quarantined: " + "; ".join(
        f"{reason} {n} (e.g. {first[reason].file} row {first[reason].index}: {first[reason].detail})"
        for reason, n in counts.most_common()
    )


def _check_sizes(rows: list[Row], splits: dict[str, list[Row]], min_rows: int) -> None:
    train = splits["train"]
    if len(train) < min_rows:
        raise ValueError(
            f"only {len(train)} usable training rows, fewer than data.min_rows = {min_rows}; "
            + _quarantine_summary(rows)
        )
    for name, split in splits.items():
        if split is not None and not split:
            raise ValueError(f"the {name} split is empty; {_quarantine_summary(rows)}")


def _report(rows: list[Row], files: list[str], splits: dict[str, list[Row] | None], fmt: str) -> dict:
    reasons = Counter(r.reason for r in rows if not r.ok)
    report = {
        "rows_read": {f: sum(r.file == f for r in rows) for f in files},
        **{name: len(split or []) for name, split in splits.items()},
        "quarantined": {reason: reasons[reason] for reason in REASONS},
        "quarantined_total": reasons.total(),
        "format": fmt,
    }
    kept = sum(len(split or []) for split in splits.values())
    assert sum(report["rows_read"].values()) == kept + report["quarantined_total"]
    return report


def _empty_or_frame(rows: list[Row] | None) -> pd.DataFrame:
    return _frame(rows) if rows else pd.DataFrame(columns=["id", *FIELDS])


def prepare(
    source: str,
    out_dir: str,
    *,
    tokenizer: str,
    max_length: int,
    validation: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_rows: int = 1,
    trust_remote_code: bool = False,
    split: str = "train",
    validation_split: str = "test",
    test: str | None = None,
    test_split: str = "test",
    test_fraction: float = 0.0,
    dev: str | None = None,
    dev_split: str = "test",
    dev_fraction: float = 0.0,
) -> dict:
    """Write train.parquet, val.parquet, test.parquet, dev.parquet, quarantine.jsonl and report.json under
    `out_dir`; return the report.

    With `validation`, all kept source rows are training rows; otherwise a row is a validation row when a hash
    of (seed, id) falls below `val_fraction`. `split` and `validation_split` choose the split of a source that is a
    hub id or dataset folder (e.g. `train_prefs` and `test_prefs` of HuggingFaceH4/ultrafeedback_binarized).
    Test pairs (held out of every stage, for the `likelihood` evaluation) are the rows of `test`, or else the source
    rows whose same hash lies in the top `test_fraction`, so val and test never overlap and neither moves when the
    other fraction changes.
    Dev pairs (what the `auto` selector chooses on) are the rows of `dev`, or else, with `dev_fraction`, the
    validation rows whose hash lies in the lowest `dev_fraction` of the validation range: a stable share of them,
    taken out of the validation pairs, so that θ_val never trains on them.
    """
    names = {"source": dataset_name(source, split)}
    if validation:
        names["validation"] = dataset_name(validation, validation_split)
    if dev:
        names["dev"] = dataset_name(dev, dev_split)
    if test:
        names["test"] = dataset_name(test, test_split)
    for earlier, later in combinations(names, 2):
        if names[later] == names[earlier]:
            raise ValueError(
                f"{later} is the same as {earlier} ({names[later]!r}): every {later} row would be a duplicate"
            )
    tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    files = list(names.values())
    rows = read_rows(source, split) + (read_rows(validation, validation_split) if validation else [])
    rows += read_rows(dev, dev_split) if dev else []
    rows += read_rows(test, test_split) if test else []
    assign_ids(rows)
    fmt = _decide_format(rows)
    _make_usable(rows, fmt, tok, tokenizer, max_length)

    kept = [r for r in rows if r.ok]
    dev_rows = [r for r in kept if r.file == names.get("dev")]
    test_rows = [r for r in kept if r.file == names.get("test")]
    kept = [r for r in kept if r.file not in (names.get("dev"), names.get("test"))]
    if validation:
        train, val = [r for r in kept if r.file == names["source"]], [r for r in kept if r.file == names["validation"]]
    else:
        val_ids = {r.id for r in kept if in_val(r.id, seed, val_fraction)}
        train, val = [r for r in kept if r.id not in val_ids], [r for r in kept if r.id in val_ids]
    if dev_fraction and not dev:
        val_range = 1.0 if validation else val_fraction  # where the hash of a validation row lies
        dev_rows = [r for r in val if in_val(r.id, seed, dev_fraction * val_range)]
        val = [r for r in val if not in_val(r.id, seed, dev_fraction * val_range)]
    if not test:
        test_ids = {r.id for r in train if not in_val(r.id, seed, 1 - test_fraction)}
        train, test_rows = [r for r in train if r.id not in test_ids], [r for r in train if r.id in test_ids]
    splits = {
        "train": train,
        "val": val,
        "test": test_rows if test or test_fraction else None,
        "dev": dev_rows if dev or dev_fraction else None,
    }
    _check_sizes(rows, splits, min_rows)
    report = _report(rows, files, splits, fmt)

    out = Path(out_dir)
    write_jsonl((_quarantine_line(r) for r in rows if not r.ok), out / "quarantine.jsonl")
    for name, split_rows in splits.items():
        write_parquet(_empty_or_frame(split_rows), out / f"{name}.parquet")
    write_json(report, out / "report.json")
    log.info("prepare: %s", json.dumps(report))
    return report
