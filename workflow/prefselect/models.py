"""Loading models (causal LMs, reward models) and tokenizers safely: safetensors only, remote code on request."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def _check_source(path: str) -> None:
    # A string that looks like a local path but does not exist is a typo, not a hub id.
    if (path.startswith((".", "/", "~")) or Path(path).suffix) and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"model path {path!r} does not exist")


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    _check_source(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load a tokenizer from {path!r}: {err}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, trust_remote_code: bool = False, dtype: torch.dtype | str = torch.float32,
               auto_class: type = AutoModelForCausalLM) -> PreTrainedModel:
    """Load a model (a causal LM unless `auto_class` says otherwise) from a folder or hub id, from safetensors
    weights (never by unpickling)."""
    _check_source(path)
    try:
        model = auto_class.from_pretrained(path, trust_remote_code=trust_remote_code, use_safetensors=True, dtype=dtype)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load a model ({auto_class.__name__}) from {path!r}: {err}") from err
    return model
