"""Summed completion log-probs of preference pairs, tokenized exactly as TRL's DPOTrainer tokenizes them.

A pair's log π(y|x) is the sum of token log-probs of completion y after prompt x (TRL's convention). Two forward
layouts compute it, with the same numbers:

- packed (SDPA or eager attention): one row per pair, prompt + chosen + rejected. The rejected tokens take the
  positions that follow the prompt and an attention mask hides the chosen tokens from them, so each sees exactly
  what it sees in TRL's prompt + rejected row. The prompt is computed once instead of twice, and neither side is
  padded to the length of the other.
- padded: TRL's own collated batches (all chosen rows, then all rejected rows), for other attention kernels and
  for models with a sliding window shorter than max_length (a custom mask would bypass the window).

Both project hidden states through the LM head only where the next token is a completion token, a chunk of tokens
at a time, so no batch × length × vocab logits tensor is ever built. Pairs are sorted by length and batched up to a
token budget; a shard is read, tokenized and scored CHUNK_PAIRS pairs at a time, so memory does not grow with it.
On a GPU that supports bf16 the forward runs under bf16 autocast, the precision TRL trains in there; float32 elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

from .tables import PAIR

CHUNK_PAIRS = 4096  # pairs read and tokenized at a time; length sorting happens within a chunk
LOGITS_PER_STEP = 2**24  # logits entries (64 MiB in float32) the LM head produces at a time
PACKED_ATTENTION = ("sdpa", "eager")  # kernels that take an arbitrary (rows, 1, L, L) mask


def tokenize_pairs(pairs: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Tokenize with TRL's own preparation (EOS appended, common-prefix cut), so scores match training."""
    dataset = Dataset.from_pandas(pairs[list(PAIR)], preserve_index=False)
    args = SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode="keep_start")
    tokenized = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tokenizer), dataset, tokenizer, args, "pairs")
    if len(tokenized) != len(pairs):
        # TRL drops pairs whose prompt fills max_length; `prepare` quarantines them, so this is a bug upstream.
        raise ValueError(f"{len(pairs) - len(tokenized)} pairs have a prompt of >= max_length={max_length} tokens")
    return tokenized


def completion_lengths(pairs: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> pd.DataFrame:
    """`id`, `chosen_tokens`, `rejected_tokens`: how many tokens each completion's summed log-prob runs over."""
    cuts = [cut(example, max_length) for example in tokenize_pairs(pairs, tokenizer, max_length)]
    return pd.DataFrame(
        {
            "id": pairs["id"].to_numpy(),
            "chosen_tokens": [len(chosen) for _, chosen, _ in cuts],
            "rejected_tokens": [len(rejected) for _, _, rejected in cuts],
        }
    )


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length, so that padding (wasted compute) stays small."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def padded_length(length: np.ndarray | int) -> np.ndarray | int:
    """The row length a packed pair is padded to: a function of the pair alone, so that its numbers do not depend
    on the other pairs of its batch (attention kernels round differently for another padded length) and scores
    are the same, bit for bit, whatever the sharding. Rounded up to a multiple that grows with the length (4 below
    64 tokens, then 1/16 to 1/8 of it), so that pairs of similar length share a batch and padding stays under 1/8
    of a row (beyond 32 tokens)."""
    length = np.asarray(length)
    multiple = 2 ** np.maximum(2, np.floor(np.log2(np.maximum(length, 1))).astype(int) - 3)
    return -(-length // multiple) * multiple


def token_budget(batch_size: int, max_length: int) -> int:
    """Tokens of a packed forward batch: batch_size × max_length, about `batch_size` pairs of a typical length (a
    packed pair is up to 2 × max_length, so never more memory than TRL's batch of `batch_size` pairs), more short
    ones, fewer long ones. Not more: on a CPU, larger batches of a small model spill out of the caches (the demo
    model scored 1.5x slower at twice this budget)."""
    return batch_size * max_length


def token_budget_batches(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Index batches of rows of one padded length, each within `budget` tokens (rows × padded length).

    Longest first, so that a batch too large for the device fails at once; a row longer than the budget is a
    batch of its own.
    """
    padded = padded_length(lengths)
    order = np.argsort(-padded, kind="stable")
    batches = []
    for length in np.unique(padded)[::-1]:
        same = order[padded[order] == length]
        rows = max(1, budget // int(length))
        batches += [same[i : i + rows] for i in range(0, len(same), rows)]
    return batches


def collated_batches(examples: list[dict], pad_token_id: int, max_length: int, batch_size: int):
    """TRL's training batches of `examples` (tokenized pairs), length-sorted; yields (indices, batch)."""
    collator = DataCollatorForPreference(pad_token_id=pad_token_id, max_length=max_length)
    lengths = np.array([len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples])
    for index in length_sorted_batches(lengths, batch_size):
        yield index, collator([examples[i] for i in index])


def cut(example: dict, max_length: int) -> tuple[list[int], list[int], list[int]]:
    """Prompt, chosen and rejected ids as TRL's collator cuts prompt + completion (keep_start) to max_length."""
    room = max_length - len(example["prompt_ids"])
    return example["prompt_ids"], example["chosen_ids"][:room], example["rejected_ids"][:room]


def packed_batch(parts: list[tuple[list[int], list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Rows prompt + chosen + rejected of pairs (their ids as `cut` cuts them), right-padded; see the module docstring.

    `attention_mask` is boolean (rows, 1, L, L), True where a query may attend to a key. For every scored completion
    token, `row`, `source` (the position whose hidden state predicts it), `target` (its id) and `side` (0 chosen,
    1 rejected). Built with array operations; the only Python loop is over pairs.
    """
    lengths = np.array([[len(ids) for ids in pair] for pair in parts]).reshape(-1, 3)
    prompt, chosen, total = lengths[:, 0], lengths[:, 1], lengths.sum(1)
    flat = np.fromiter((t for pair in parts for ids in pair for t in ids), dtype=np.int64, count=int(total.sum()))
    row = np.repeat(np.arange(len(parts)), total)
    col = np.arange(len(flat)) - np.repeat(np.cumsum(total) - total, total)
    # 0 prompt, 1 chosen, 2 rejected
    side = (col >= prompt[row]).astype(np.int64) + (col >= prompt[row] + chosen[row])
    input_ids = np.full((len(parts), int(padded_length(total.max()))), pad_token_id, dtype=np.int64)
    input_ids[row, col] = flat
    position_ids = np.zeros_like(input_ids)
    position_ids[row, col] = np.where(side == 2, col - chosen[row], col)
    kind = np.full(input_ids.shape, 3, dtype=np.int64)  # padding: 3
    kind[row, col] = side
    # A token is predicted by the position before it, except the first rejected token: by the last prompt token.
    source = np.where((side == 2) & (col == prompt[row] + chosen[row]), prompt[row] - 1, col - 1)
    scored = (side > 0) & (source >= 0)  # with an empty prompt TRL cannot score a first token either
    kind_t = torch.from_numpy(kind)
    causal = torch.ones(kind.shape[1], kind.shape[1], dtype=torch.bool).tril()
    mask = causal & ~((kind_t[:, :, None] == 2) & (kind_t[:, None, :] == 1))
    return {
        "input_ids": torch.from_numpy(input_ids),
        "position_ids": torch.from_numpy(position_ids),
        "attention_mask": mask[:, None],
        "row": torch.from_numpy(row[scored]),
        "source": torch.from_numpy(source[scored]),
        "target": torch.from_numpy(flat[scored]),
        "side": torch.from_numpy(side[scored] - 1),
    }


def target_logps(model: PreTrainedModel, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(lm_head(h))[target] for each row h of `hidden`, a bounded number of logits at a time."""
    head = model.get_output_embeddings()
    step = max(1, LOGITS_PER_STEP // head.weight.shape[0])
    out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    for start in range(0, len(targets), step):
        # One fused log_softmax pass: twice as fast on CPU as logsumexp's separate max, exp, sum and log.
        logprobs = head(hidden[start : start + step]).float().log_softmax(-1)
        out[start : start + step] = logprobs.gather(1, targets[start : start + step, None]).squeeze(1)
    return out


def packed_logps(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(pairs, 2) summed log-probs of chosen and rejected from one packed batch (see `packed_batch`)."""
    mask = batch["attention_mask"]
    if model.config._attn_implementation == "eager":  # eager attention adds the mask to its scores
        blocked = torch.finfo(model.dtype).min
        mask = torch.zeros(mask.shape, dtype=model.dtype, device=mask.device).masked_fill_(~mask, blocked)
    hidden = model.base_model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask, use_cache=False
    ).last_hidden_state
    logps = target_logps(model, hidden[batch["row"], batch["source"]], batch["target"])
    sums = torch.zeros(2 * len(batch["input_ids"]), dtype=torch.float64, device=logps.device)
    return sums.index_add_(0, 2 * batch["row"] + batch["side"], logps.double()).view(-1, 2)


def completion_logps(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probs of the completion tokens of each row of a TRL-collated batch (the padded layout)."""
    hidden = model.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    # Position t predicts token t+1: keep the hidden states whose next token is a completion token.
    rows, cols = batch["completion_mask"][:, 1:].bool().nonzero(as_tuple=True)
    logps = target_logps(model, hidden[rows, cols], batch["input_ids"][rows, cols + 1])
    return torch.zeros(len(hidden), dtype=torch.float64, device=logps.device).index_add_(0, rows, logps.double())


def packable(model: PreTrainedModel, max_length: int) -> bool:
    """Whether the packed layout computes what TRL computes for this model (see the module docstring)."""
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    return config._attn_implementation in PACKED_ATTENTION and (window is None or window >= max_length)


def pair_logps(
    model: PreTrainedModel,
    pairs: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    batch_size: int = 64,
    packed: bool | None = None,
    autocast: bool | None = None,
) -> pd.DataFrame:
    """Return `id`, `chosen_logp`, `rejected_logp` for every pair, in the input order.

    A forward batch holds at most `token_budget(batch_size, max_length)` tokens.
    `packed`: the layout; None picks packed wherever it is exact (`packable`). `autocast`: bf16 autocast; None
    computes in the precision TRL trains in on the model's device (`trains_in_bf16`).
    """
    chunks = [
        examples_logps(
            model,
            token_examples(pairs.iloc[i : i + CHUNK_PAIRS], tokenizer, max_length),
            tokenizer.pad_token_id,
            max_length,
            batch_size,
            packed,
            autocast,
        )
        for i in range(0, len(pairs), CHUNK_PAIRS)
    ]
    logps = np.concatenate(chunks) if chunks else np.empty((0, 2))
    return pd.DataFrame({"id": pairs["id"].to_numpy(), "chosen_logp": logps[:, 0], "rejected_logp": logps[:, 1]})


def token_examples(pairs: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict]:
    """`prompt_ids`, `chosen_ids`, `rejected_ids` of each pair (`tokenize_pairs`), as Python lists."""
    tokenized = tokenize_pairs(pairs, tokenizer, max_length)
    return tokenized.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_list()


def trains_in_bf16(device: torch.device) -> bool:
    """Whether TRL trains under bf16 autocast on this device (`training.dpo_config`: on a GPU that supports bf16).
    Scores then take the same precision, the training loss's: with float32 weights, matmuls in bf16."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


@torch.inference_mode()
def examples_logps(
    model: PreTrainedModel,
    examples: list[dict],
    pad_token_id: int,
    max_length: int,
    batch_size: int = 64,
    packed: bool | None = None,
    autocast: bool | None = None,
) -> np.ndarray:
    """(pairs, 2) summed log-probs of chosen and rejected of tokenized pairs (`token_examples`), in their order."""
    model.eval()
    device = model.device
    autocast = trains_in_bf16(device) if autocast is None else autocast
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        return _examples_logps(
            model,
            examples,
            pad_token_id,
            max_length,
            batch_size,
            packable(model, max_length) if packed is None else packed,
        )


def _examples_logps(
    model, examples: list[dict], pad_token_id: int, max_length: int, batch_size: int, packed: bool
) -> np.ndarray:
    logps = np.empty((len(examples), 2))
    device = model.device
    if packed:
        parts = [cut(e, max_length) for e in examples]
        lengths = np.array([sum(map(len, p)) for p in parts])
        for index in token_budget_batches(lengths, token_budget(batch_size, max_length)):
            batch = {k: v.to(device) for k, v in packed_batch([parts[i] for i in index], pad_token_id).items()}
            logps[index] = packed_logps(model, batch).cpu().numpy()
        return logps
    for index, batch in collated_batches(examples, pad_token_id, max_length, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        logps[index] = completion_logps(model, batch).cpu().numpy().reshape(2, -1).T
    return logps


def count_pairs(path: str) -> int:
    """Rows of a parquet file of pairs, from its footer."""
    return pq.ParquetFile(path).metadata.num_rows


def read_pairs(
    path: str, rows: slice | None = None, ids: Iterable[str] | None = None, chunk: int = CHUNK_PAIRS
) -> Iterator[pd.DataFrame]:
    """The pairs (id, prompt, chosen, rejected) of a parquet file, in file order, `chunk` rows at a time.

    `rows`: only that row range; `ids`: only the rows with these ids (a scoring shard, which is a contiguous range:
    its range is found from the id column alone). Only the row groups that overlap the range are read.
    """
    file = pq.ParquetFile(path)
    wanted = None if ids is None else set(ids)
    if wanted is not None:
        found, position = [], 0
        for batch in file.iter_batches(batch_size=chunk, columns=["id"]):
            found.extend(position + np.flatnonzero(batch.column(0).to_pandas().isin(wanted)))
            position += batch.num_rows
        if len(found) != len(wanted):
            raise ValueError(f"{len(wanted) - len(found)} of {len(wanted)} pair ids are not in {path}")
        rows = slice(min(found), max(found) + 1) if found else slice(0, 0)
    rows = slice(0, file.metadata.num_rows) if rows is None else rows
    bounds = np.cumsum([0] + [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)])
    groups = [g for g in range(file.num_row_groups) if bounds[g] < rows.stop and bounds[g + 1] > rows.start]
    position = bounds[groups[0]] if groups else 0
    for batch in file.iter_batches(batch_size=chunk, row_groups=groups, columns=list(PAIR)):
        start, position = position, position + batch.num_rows
        lo, hi = max(start, rows.start), min(position, rows.stop)
        if lo < hi:
            pairs = batch.slice(lo - start, hi - lo).to_pandas()
            yield pairs if wanted is None else pairs[pairs["id"].isin(wanted)]


def stream_logps(
    model: PreTrainedModel,
    chunks: Iterable[pd.DataFrame],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    batch_size: int = 64,
) -> pd.DataFrame:
    """`pair_logps` of a stream of pair chunks (e.g. `read_pairs`): only the log-probs of past chunks stay in memory."""
    parts = [pair_logps(model, pairs, tokenizer, max_length, batch_size) for pairs in chunks]
    return pd.concat(
        parts or [pair_logps(model, pd.DataFrame(columns=list(PAIR)), tokenizer, max_length)], ignore_index=True
    )
