"""The prepare step: every input row is kept (train/val) or quarantined with a reason; ids are stable."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import huggingface_hub.constants
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from trl.trainer.dpo_trainer import DPOTrainer

from prefselect.data import REASONS, in_val, prepare

# Each message ends with EOS, so a rendered completion ends with EOS and TRL appends none to it as standard text.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = "the cat sat on the mat while a dog ran in the park and birds sang over green hills".split()


def _save_tokenizer(folder: Path, chat_template: str | None) -> str:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|eos|>", "<|pad|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([" ".join(WORDS), "<|user|><|assistant|><|system|>"] * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|eos|>", pad_token="<|pad|>")
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tok_path(tmp_path_factory) -> str:
    return _save_tokenizer(tmp_path_factory.mktemp("tok"), CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def plain_tok_path(tmp_path_factory) -> str:
    return _save_tokenizer(tmp_path_factory.mktemp("plain_tok"), None)


def good_row(i: int) -> dict:
    w = WORDS[i % len(WORDS) :] + WORDS
    return {"prompt": f"{i} {w[0]} {w[1]}", "chosen": f" {w[2]} {w[3]}", "rejected": f" {w[4]} {w[5]} {w[6]}"}


def msgs(role: str, content: str) -> list[dict]:
    return [{"role": role, "content": content}]


def conv_row(i: int) -> dict:
    row = good_row(i)
    return {
        "prompt": msgs("user", row["prompt"]),
        "chosen": msgs("assistant", row["chosen"]),
        "rejected": msgs("assistant", row["rejected"]),
    }


def whole(row: dict) -> dict:
    """The implicit-prompt form of a conversational row: each completion as the whole conversation."""
    return {k: row["prompt"] + row[k] for k in ("chosen", "rejected")}


def write_lines(path: Path, rows: list) -> str:
    """JSON Lines; a bytes or str item is written as the raw line."""
    with open(path, "wb") as f:
        for row in rows:
            line = row if isinstance(row, bytes) else (row if isinstance(row, str) else json.dumps(row)).encode()
            f.write(line + b"\n")
    return str(path)


def outputs(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[dict], dict]:
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    return pd.read_parquet(out / "train.parquet"), pd.read_parquet(out / "val.parquet"), quarantine, report


def check_invariant(report: dict) -> None:
    kept = sum(report[split] for split in ("train", "val", "test", "dev"))
    assert sum(report["rows_read"].values()) == kept + report["quarantined_total"]
    assert report["quarantined_total"] == sum(report["quarantined"].values())


def trl_tokenize(rows: list[dict], tokenizer, max_length: int) -> Dataset:
    """TRL's own DPO preparation (extract prompt, append EOS, tokenize, drop too-long prompts)."""
    args = SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode="keep_start")
    trainer = SimpleNamespace(_tokenizer=tokenizer)
    return DPOTrainer._prepare_dataset(trainer, Dataset.from_list(rows), tokenizer, args, "t")


@pytest.mark.parametrize("name", ["d.jsonl", "d.json"])  # a .json file may hold JSON Lines
def test_standard_rows_kept(tmp_path, tok_path, name):
    src = write_lines(tmp_path / name, [good_row(i) for i in range(40)])
    report = prepare(src, str(tmp_path / "out"), tokenizer=tok_path, max_length=64)
    train, val, quarantine, written = outputs(tmp_path / "out")
    assert written == report and report["format"] == "standard"
    assert (report["train"], report["val"], quarantine) == (len(train), len(val), [])
    assert len(train) + len(val) == 40 and len(val) > 0
    assert list(train.columns) == ["id", "prompt", "chosen", "rejected"]
    both = pd.concat([train, val])
    assert both["id"].is_unique and both["id"].str.fullmatch("[0-9a-f]{16}").all()
    assert sorted(both["prompt"]) == sorted(good_row(i)["prompt"] for i in range(40))
    assert train["id"].map(lambda i: not in_val(i, 0, 0.2)).all()
    check_invariant(report)


def test_every_quarantine_reason(tmp_path, tok_path):
    good = [good_row(i) for i in range(10)]
    crafted = {
        10: ("invalid_json", '{"prompt": "a", "chosen":'),
        11: ("invalid_json", "[1, 2]"),
        12: ("missing_field", {"prompt": "a", "chosen": "b"}),
        13: ("missing_field", {"prompt": None, "chosen": "b", "rejected": "c"}),
        14: ("not_a_string", {"prompt": "a", "chosen": 3, "rejected": "c"}),
        15: ("empty_field", {"prompt": "a", "chosen": "  \n", "rejected": "c"}),
        16: ("identical_completions", {"prompt": "a", "chosen": " same", "rejected": " same"}),
        17: ("duplicate_id", good[3]),
        18: ("prompt_too_long", {"prompt": " ".join(WORDS * 10), "chosen": " a", "rejected": " b"}),
        19: ("mixed_format", conv_row(99)),
    }
    src = write_lines(tmp_path / "d.jsonl", good + [row for _, row in crafted.values()])
    report = prepare(src, str(tmp_path / "out"), tokenizer=tok_path, max_length=64, val_fraction=0.3)
    train, val, quarantine, _ = outputs(tmp_path / "out")

    assert {q["row"]: q["reason"] for q in quarantine} == {i: reason for i, (reason, _) in crafted.items()}
    assert all(q["file"] == src and q["detail"] for q in quarantine)
    by_row = {q["row"]: q for q in quarantine}
    assert by_row[10]["id"] is None and by_row[10]["raw"] == '{"prompt": "a", "chosen":'
    assert "line 11" in by_row[10]["detail"]
    assert "same content as an earlier row: row 3" in by_row[17]["detail"]
    assert by_row[17]["id"] == pd.concat([train, val]).set_index("prompt").loc[good[3]["prompt"], "id"]
    assert by_row[14]["raw"] == crafted[14][1]
    assert len(train) + len(val) == 10
    assert report["quarantined"] == {r: sum(reason == r for reason, _ in crafted.values()) for r in REASONS}
    assert report["rows_read"] == {src: 20}
    check_invariant(report)


def test_prompt_too_long_matches_what_trl_drops(tmp_path, tok_path):
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    rows = [{**good_row(i), "prompt": " ".join(WORDS[: 1 + i % 12])} for i in range(40)]
    src = write_lines(tmp_path / "d.jsonl", rows)
    prepare(src, str(tmp_path / "out"), tokenizer=tok_path, max_length=12)
    train, val, quarantine, _ = outputs(tmp_path / "out")
    kept = set(pd.concat([train, val])["prompt"])
    assert {q["reason"] for q in quarantine} == {"prompt_too_long"} and kept
    assert kept == set(trl_tokenize(rows, tokenizer, max_length=12)["prompt"])


def test_invalid_utf8_line_is_quarantined(tmp_path, tok_path):
    src = write_lines(tmp_path / "d.jsonl", [good_row(0), b'{"prompt": "caf\xe9"}', good_row(1), good_row(2)])
    report = prepare(src, str(tmp_path / "out"), tokenizer=tok_path, max_length=64, val_fraction=0.5)
    (q,) = outputs(tmp_path / "out")[2]
    assert (q["row"], q["reason"], q["raw"]) == (1, "invalid_json", '{"prompt": "caf\ufffd"}')
    assert "line 2" in q["detail"]
    assert report["train"] + report["val"] == 3


def test_ids_are_stable_under_reordering_and_additions(tmp_path, tok_path):
    rows = [good_row(i) for i in range(60)]
    first = write_lines(tmp_path / "a.jsonl", rows)
    again = write_lines(tmp_path / "b.jsonl", rows[::-1] + [good_row(i) for i in range(60, 80)])
    split = {}
    for name, src in (("a", first), ("b", again)):
        prepare(src, str(tmp_path / name), tokenizer=tok_path, max_length=64, seed=3)
        train, val, _, _ = outputs(tmp_path / name)
        split[name] = {**dict.fromkeys(train["id"], "train"), **dict.fromkeys(val["id"], "val")}
    assert len(split["a"]) == 60 and len(split["b"]) == 80
    assert {i: split["b"][i] for i in split["a"]} == split["a"]
    prepare(first, str(tmp_path / "a2"), tokenizer=tok_path, max_length=64, seed=3)
    pd.testing.assert_frame_equal(outputs(tmp_path / "a2")[0], outputs(tmp_path / "a")[0])
    assert set(split["a"].values()) == {"train", "val"}


def test_id_column_and_extra_columns(tmp_path, tok_path):
    rows = [
        {**good_row(i), "id": i, "flipped": i % 2 == 0, "oracle_margin": i / 4, "score": [i, -i]} for i in range(20)
    ]
    rows += [{**good_row(50), "id": 3}, {**good_row(51), "id": None}]
    src = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)  # pyarrow keeps the nullable int ids ints
    prepare(str(src), str(tmp_path / "out"), tokenizer=tok_path, max_length=64)
    train, val, quarantine, _ = outputs(tmp_path / "out")
    found = [(q["row"], q["reason"], q["id"]) for q in quarantine]
    assert found == [(20, "duplicate_id", "3"), (21, "missing_field", None)]
    assert "id '3' already used by an earlier row: row 3" in quarantine[0]["detail"]
    both = pd.concat([train, val]).set_index("id").loc[[str(i) for i in range(20)]]
    assert list(train.columns) == ["id", "prompt", "chosen", "rejected", "flipped", "oracle_margin", "score"]
    assert both["flipped"].tolist() == [i % 2 == 0 for i in range(20)]
    assert both["oracle_margin"].tolist() == [i / 4 for i in range(20)]
    assert [list(s) for s in both["score"]] == [[i, -i] for i in range(20)]
    assert list(train["id"]) == sorted(train["id"], key=int)  # input order


def test_validation_file(tmp_path, tok_path):
    src = write_lines(tmp_path / "train.jsonl", [good_row(i) for i in range(10)])
    val_rows = [good_row(i) for i in range(20, 25)]
    val_rows += [good_row(2), {"prompt": "x", "chosen": "", "rejected": "y"}, "oops"]
    val_src = tmp_path / "val.json"
    val_src.write_text(json.dumps(val_rows))  # a .json list of records
    report = prepare(src, str(tmp_path / "out"), tokenizer=tok_path, max_length=64, validation=str(val_src))
    train, val, quarantine, _ = outputs(tmp_path / "out")
    assert (report["train"], report["val"]) == (10, 5)
    assert sorted(val["prompt"]) == sorted(good_row(i)["prompt"] for i in range(20, 25))
    assert [(q["file"], q["row"], q["reason"]) for q in quarantine] == [
        (str(val_src), 5, "duplicate_id"),  # a validation copy of a training pair would leak
        (str(val_src), 6, "empty_field"),
        (str(val_src), 7, "invalid_json"),
    ]
    assert report["rows_read"] == {src: 10, str(val_src): 8}
    check_invariant(report)


def test_conversational_rendering_matches_trl(tmp_path, tok_path):
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    explicit = [conv_row(i) for i in range(12)]
    explicit[1]["prompt"] = msgs("system", "be brief") + explicit[1]["prompt"]
    rows = [{"id": i, **row} for i, row in enumerate(explicit)]
    # TRL's implicit-prompt form: whole conversations that share the prompt turns
    rows[2] = {"id": 2, **whole(explicit[2])}
    rows[3] = {"id": 3, "prompt": "a copy", **whole(explicit[3])}  # as in ultrafeedback_binarized
    mismatch = {"id": 12, **conv_row(30), "chosen": msgs("user", "not an assistant turn")}
    src = write_lines(tmp_path / "d.jsonl", rows + [mismatch, {"id": 13, **good_row(40)}])
    report = prepare(src, str(tmp_path / "out"), tokenizer=tok_path, max_length=128, val_fraction=0.3)
    train, val, quarantine, _ = outputs(tmp_path / "out")
    assert report["format"] == "conversational" and min(report["train"], report["val"]) > 0
    assert [(q["row"], q["reason"]) for q in quarantine] == [(12, "chat_template_mismatch"), (13, "mixed_format")]

    rendered = pd.concat([train, val]).set_index("id").loc[[str(i) for i in range(12)]]
    for row, (_, out) in zip(explicit, rendered.iterrows()):
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        assert out["prompt"] == prompt
        for key in ("chosen", "rejected"):
            assert prompt + out[key] == tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=False)

    # TRL tokenizing our strings (standard text) gives the tokens it gives the conversational rows
    ours = trl_tokenize(rendered[["prompt", "chosen", "rejected"]].to_dict("records"), tokenizer, 128)
    theirs = trl_tokenize(explicit, tokenizer, 128)
    for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert ours[key] == theirs[key]


def test_conversational_needs_a_chat_template(tmp_path, plain_tok_path):
    src = write_lines(tmp_path / "d.jsonl", [conv_row(i) for i in range(5)])
    with pytest.raises(ValueError, match=f"tokenizer '{plain_tok_path}' has no chat template"):
        prepare(src, str(tmp_path / "out"), tokenizer=plain_tok_path, max_length=64)


def test_min_rows_and_empty_split_errors(tmp_path, tok_path):
    bad = {"prompt": "a", "chosen": "", "rejected": "b"}
    src = write_lines(tmp_path / "d.jsonl", [good_row(i) for i in range(4)] + [bad, bad, "nope"])
    with pytest.raises(ValueError, match=r"only \d usable training rows, fewer than data.min_rows = 50") as err:
        prepare(src, str(tmp_path / "out"), tokenizer=tok_path, max_length=64, min_rows=50)
    assert "empty_field 1" in str(err.value) and "duplicate_id 1" in str(err.value)
    assert "invalid_json 1" in str(err.value)
    with pytest.raises(ValueError, match="the val split is empty"):
        prepare(src, str(tmp_path / "out"), tokenizer=tok_path, max_length=64, val_fraction=0.0)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_hub_id_offline_is_a_clear_error(tmp_path, tok_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    expected = "data source 'nobody/no-such-prefs': not a local file, and loading split 'train' from the hub failed"
    with pytest.raises(ValueError, match=expected):
        prepare("nobody/no-such-prefs", str(tmp_path / "out"), tokenizer=tok_path, max_length=64)


def test_missing_files_are_clear_errors(tmp_path, tok_path):
    src = write_lines(tmp_path / "d.jsonl", [good_row(i) for i in range(5)])
    missing_tok = str(tmp_path / "no-tokenizer")
    with pytest.raises(FileNotFoundError, match=missing_tok):
        prepare(src, str(tmp_path / "out"), tokenizer=missing_tok, max_length=64)
    missing = str(tmp_path / "missing.parquet")
    with pytest.raises(FileNotFoundError, match=f"data source '{missing}': file not found"):
        prepare(missing, str(tmp_path / "out"), tokenizer=tok_path, max_length=64)


def test_truncated_parquet_is_a_file_level_error(tmp_path, tok_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame([good_row(i) for i in range(50)]).to_parquet(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"data source '{path}': cannot read the file"):
        prepare(str(path), str(tmp_path / "out"), tokenizer=tok_path, max_length=64)


# ShareGPT (LLaMA-Factory's dpo_en_demo.json) and the test split ----------------------------------------------------

SHAREGPT_ROLE = {"user": "human", "assistant": "gpt", "system": "system"}


def turn(role: str, text: str) -> dict:
    return {"from": role, "value": text}


def sharegpt_row(i: int, history: int = 0, system: bool = False) -> dict:
    row = good_row(i)
    turns = [turn("system", "be brief")] if system else []
    turns += [turn(r, f"{r} {k}") for k in range(history) for r in ("human", "gpt")]
    return {
        "conversations": turns + [turn("human", row["prompt"])],
        "chosen": turn("gpt", row["chosen"]),
        "rejected": turn("gpt", row["rejected"]),
    }


def as_messages(turns: list[dict]) -> list[dict]:
    roles = {v: k for k, v in SHAREGPT_ROLE.items()}
    return [{"role": roles[t["from"]], "content": t["value"]} for t in turns]


def test_sharegpt_rows_become_conversational_pairs_or_are_quarantined(tmp_path, tok_path):
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    good = [sharegpt_row(i, history=i % 3, system=i % 4 == 0) for i in range(12)]
    good[5]["chosen"]["value"] = " " + " ".join(WORDS * 5)  # a long answer: kept, cut at max_length later
    same_answers = {**sharegpt_row(7), "conversations": [turn("human", "another question")]}  # not a duplicate
    crafted = {
        13: ("missing_field", {k: v for k, v in sharegpt_row(13).items() if k != "chosen"}),
        14: ("not_a_string", {**sharegpt_row(14), "conversations": "hello"}),
        15: ("not_a_string", {**sharegpt_row(15), "rejected": turn("gpt", 3)}),
        16: ("invalid_roles", {**sharegpt_row(16), "conversations": [turn("function_call", "{}"), turn("human", "a")]}),
        17: ("invalid_roles", {**sharegpt_row(17), "conversations": [turn("human", "a"), turn("gpt", "b")]}),
        18: ("invalid_roles", {**sharegpt_row(18), "chosen": turn("human", "not an answer")}),
        19: ("empty_field", {**sharegpt_row(19), "conversations": []}),
        20: ("empty_field", {**sharegpt_row(20), "rejected": turn("gpt", " \n")}),
        21: ("identical_completions", {**sharegpt_row(21), "rejected": sharegpt_row(21)["chosen"]}),
        22: ("duplicate_id", good[3]),
        23: ("mixed_format", good_row(23)),
        24: ("prompt_too_long", {**sharegpt_row(24), "conversations": [turn("human", " ".join(WORDS * 10))]}),
    }
    src = tmp_path / "pairs.json"  # LLaMA-Factory's layout: one JSON array
    src.write_text(json.dumps(good + [same_answers] + [row for _, row in crafted.values()]))
    report = prepare(str(src), str(tmp_path / "out"), tokenizer=tok_path, max_length=96, val_fraction=0.3)
    train, val, quarantine, _ = outputs(tmp_path / "out")

    assert report["format"] == "sharegpt" and min(report["train"], report["val"]) > 0
    assert {q["row"]: q["reason"] for q in quarantine} == {i: reason for i, (reason, _) in crafted.items()}
    assert report["quarantined"] == {r: sum(reason == r for reason, _ in crafted.values()) for r in REASONS}
    assert "function_call" in next(q["detail"] for q in quarantine if q["row"] == 16)
    check_invariant(report)
    kept = pd.concat([train, val])
    assert len(kept) == 13 and list(kept.columns) == ["id", "prompt", "chosen", "rejected"]  # no `conversations`

    by_prompt = kept.set_index("prompt")
    for row in good + [same_answers]:
        prompt = as_messages(row["conversations"])
        rendered = by_prompt.loc[tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)]
        for key in ("chosen", "rejected"):
            full = tokenizer.apply_chat_template(prompt + as_messages([row[key]]), tokenize=False)
            assert rendered.name + rendered[key] == full
    # TRL tokenizing our strings gives the tokens it gives the same pairs in its conversational format, truncated
    conversational = [
        {
            "prompt": as_messages(r["conversations"]),
            "chosen": as_messages([r["chosen"]]),
            "rejected": as_messages([r["rejected"]]),
        }
        for r in good
    ]
    order = [
        tokenizer.apply_chat_template(c["prompt"], add_generation_prompt=True, tokenize=False) for c in conversational
    ]
    ours = trl_tokenize(
        by_prompt.loc[order].reset_index()[["prompt", "chosen", "rejected"]].to_dict("records"), tokenizer, 96
    )
    theirs = trl_tokenize(conversational, tokenizer, 96)
    for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert ours[key] == theirs[key]
    assert len(ours[5]["prompt_ids"]) + len(ours[5]["chosen_ids"]) > 96  # the long answer, which TRL's collator cuts


def test_chatml_completion_keeps_one_eos(tmp_path):
    """A template that writes `<|eos|>\\n` after each turn: the completion ends at its EOS, so TRL adds no second."""
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tok_path = _save_tokenizer(tmp_path / "tok", template)
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    rows = [sharegpt_row(i) for i in range(10)]
    src = tmp_path / "pairs.json"
    src.write_text(json.dumps(rows))
    prepare(str(src), str(tmp_path / "out"), tokenizer=tok_path, max_length=64, val_fraction=0.3)
    train, val, _, _ = outputs(tmp_path / "out")
    kept = pd.concat([train, val])
    assert kept["chosen"].str.endswith("<|eos|>").all()
    assert not kept["chosen"].str.contains("<|eos|>\n", regex=False).any()
    ours = trl_tokenize(kept[["prompt", "chosen", "rejected"]].to_dict("records"), tokenizer, 64)
    eos = tokenizer.eos_token_id
    assert all(ids.count(eos) == 1 and ids[-1] == eos for ids in ours["chosen_ids"])


def test_test_split_is_held_out_and_stable(tmp_path, tok_path):
    src = write_lines(tmp_path / "d.jsonl", [good_row(i) for i in range(60)])
    without = prepare(src, str(tmp_path / "a"), tokenizer=tok_path, max_length=64, val_fraction=0.2)
    report = prepare(src, str(tmp_path / "b"), tokenizer=tok_path, max_length=64, val_fraction=0.2, test_fraction=0.25)
    train, val, _, _ = outputs(tmp_path / "b")
    test = pd.read_parquet(tmp_path / "b" / "test.parquet")
    assert report["test"] == len(test) > 0 and without["test"] == 0
    assert len(pd.read_parquet(tmp_path / "a" / "test.parquet")) == 0
    assert report["train"] + report["val"] + report["test"] == 60 == sum(report["rows_read"].values())
    assert not set(test["id"]) & (set(train["id"]) | set(val["id"]))
    assert set(val["id"]) == set(pd.read_parquet(tmp_path / "a" / "val.parquet")["id"])  # val does not move
    assert test["id"].map(lambda i: not in_val(i, 0, 0.75)).all()


def test_dev_split_is_held_out_of_every_other_split_stable_and_accounted_for(tmp_path, tok_path):
    """Dev pairs come out of the validation pairs by the same hash, so θ_val never trains on them."""

    def split(name: str, n: int, **extra) -> tuple[dict, dict[str, set]]:
        src = write_lines(tmp_path / f"{name}.jsonl", [good_row(i) for i in range(n)])
        report = prepare(
            src, str(tmp_path / name), tokenizer=tok_path, max_length=64, val_fraction=0.3, test_fraction=0.2, **extra
        )
        ids = {s: set(pd.read_parquet(tmp_path / name / f"{s}.parquet")["id"]) for s in ("train", "val", "test", "dev")}
        return report, ids

    without, plain = split("plain", 80)
    report, ids = split("dev", 80, dev_fraction=0.5)
    more_report, more = split("more", 120, dev_fraction=0.5)  # 40 rows added
    assert without["dev"] == 0 and not plain["dev"]
    assert report["dev"] == len(ids["dev"]) > 0 and report["val"] == len(ids["val"]) > 0
    check_invariant(report)
    assert report["train"] + report["val"] + report["test"] + report["dev"] == 80 == sum(report["rows_read"].values())
    for a, b in [("dev", "train"), ("dev", "val"), ("dev", "test")]:
        assert not ids[a] & ids[b], (a, b)
    assert ids["dev"] | ids["val"] == plain["val"]  # taken out of the validation pairs, nothing else moves
    assert ids["train"] == plain["train"] and ids["test"] == plain["test"]
    assert ids["dev"] <= more["dev"] and ids["val"] <= more["val"]  # adding rows moves no pair's split
    assert more_report["dev"] > report["dev"]


def test_dev_pairs_from_a_file_of_their_own(tmp_path, tok_path):
    src = write_lines(tmp_path / "d.jsonl", [good_row(i) for i in range(40)])
    dev_rows = [good_row(i) for i in range(100, 112)] + [good_row(3)]  # the last repeats a training row
    dev = write_lines(tmp_path / "dev.jsonl", dev_rows)
    report = prepare(src, str(tmp_path / "o"), tokenizer=tok_path, max_length=64, dev=dev, dev_fraction=0.5)
    check_invariant(report)
    assert report["rows_read"] == {src: 40, dev: 13}
    assert report["dev"] == 12 and report["quarantined"]["duplicate_id"] == 1  # never a training pair too
    dev_ids = set(pd.read_parquet(tmp_path / "o" / "dev.parquet")["id"])
    train, val, _, _ = outputs(tmp_path / "o")
    assert not dev_ids & (set(train["id"]) | set(val["id"])) and len(train) + len(val) == 40
    with pytest.raises(ValueError, match="dev is the same as source"):
        prepare(src, str(tmp_path / "p"), tokenizer=tok_path, max_length=64, dev=src)
