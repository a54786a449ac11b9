"""Summed completion log-probs of preference pairs, tokenized exactly as TRL's DPOTrainer tokenizes them.

A pair's log π(y|x) is the sum of token log-probs of completion y after prompt x (TRL's convention). The
forward pass projects hidden states through the LM head only at completion positions, so no
batch × length × vocab logits tensor is ever built.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer


def tokenize_pairs(pairs: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Tokenize with TRL's own preparation (EOS appended, common-prefix cut), so scores match training."""
    dataset = Dataset.from_pandas(pairs[["id", "prompt", "chosen", "rejected"]], preserve_index=False)
    args = SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode="keep_start")
    tokenized = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tokenizer), dataset, tokenizer, args, "pairs")
    if len(tokenized) != len(pairs):
        # TRL drops pairs whose prompt fills max_length; `prepare` quarantines them, so this is a bug upstream.
        raise ValueError(f"{len(pairs) - len(tokenized)} pairs have a prompt of >= max_length={max_length} tokens")
    return tokenized


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length, so that padding (wasted compute) stays small."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collated_batches(examples: list[dict], pad_token_id: int, max_length: int, batch_size: int):
    """TRL's training batches of `examples` (tokenized pairs), length-sorted; yields (indices, batch)."""
    collator = DataCollatorForPreference(pad_token_id=pad_token_id, max_length=max_length)
    lengths = np.array([len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples])
    for index in length_sorted_batches(lengths, batch_size):
        yield index, collator([examples[i] for i in index])


def completion_logps(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probs of the completion tokens of each row of a TRL-collated batch."""
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    # Position t predicts token t+1: keep the hidden states whose next token is a completion token.
    targets = batch["completion_mask"][:, 1:].bool()
    rows, cols = targets.nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[:, :-1][rows, cols]).float()
    token_logps = logits.log_softmax(-1).gather(1, batch["input_ids"][:, 1:][rows, cols, None]).squeeze(1)
    return torch.zeros(len(targets), dtype=torch.float64).index_add_(0, rows, token_logps.double())


@torch.inference_mode()
def pair_logps(
    model: PreTrainedModel,
    pairs: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Return `id`, `chosen_logp`, `rejected_logp` for every pair, in the input order."""
    model.eval()
    tokenized = tokenize_pairs(pairs, tokenizer, max_length)
    examples = tokenized.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_list()
    chosen = np.empty(len(examples))
    rejected = np.empty(len(examples))
    device = model.device
    for index, batch in collated_batches(examples, tokenizer.pad_token_id, max_length, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        logps = completion_logps(model, batch).cpu().numpy()
        chosen[index], rejected[index] = logps[: len(index)], logps[len(index) :]
    return pd.DataFrame({"id": pairs["id"].to_numpy(), "chosen_logp": chosen, "rejected_logp": rejected})
