"""Sample continuations of text prompts from any causal LM folder."""

from __future__ import annotations

import pandas as pd
import torch

from . import models


def load_for_sampling(model_dir: str, trust_remote_code: bool = False):
    """Model (in its saved dtype, from safetensors only, on the device) and tokenizer from a folder or hub id."""
    model = models.load_model(model_dir, trust_remote_code, dtype="auto").to(models.device()).eval()
    return model, models.load_tokenizer(model_dir, trust_remote_code)


def eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    return {*ids, tokenizer.eos_token_id} - {None}


def cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    return next((ids[:i] for i, t in enumerate(ids) if t in eos), ids)


def sample_continuations(
    model_dir: str,
    prompts: list[str],
    samples: int,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 256,
    temperature: float = 1.0,
    trust_remote_code: bool = False,
) -> pd.DataFrame:
    """`samples` sampled continuations per prompt; prompt + continuation is the full decoded text.

    The same seed, prompts and batch_size give the same samples on the same device.
    """
    model, tokenizer = load_for_sampling(model_dir, trust_remote_code)
    tokenizer.padding_side = "left"  # generated tokens must follow the prompt directly
    eos = eos_ids(model, tokenizer)
    jobs = [(p, s) for p in range(len(prompts)) for s in range(samples)]
    torch.manual_seed(seed)
    rows = []
    with torch.inference_mode():
        for i in range(0, len(jobs), batch_size):
            batch = jobs[i : i + batch_size]
            enc = tokenizer([prompts[p] for p, _ in batch], return_tensors="pt", padding=True).to(model.device)
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :].tolist()
            for (p, s), ids in zip(batch, new):
                text = tokenizer.decode(
                    cut_at_eos(ids, eos), skip_special_tokens=True, clean_up_tokenization_spaces=False
                )  # keep prompt + text exact
                rows.append({"prompt_index": p, "sample": s, "continuation": text})
    return pd.DataFrame(rows, columns=["prompt_index", "sample", "continuation"])
