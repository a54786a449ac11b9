"""Loading models (causal LMs, reward models) and tokenizers safely: safetensors only, remote code on request."""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from . import lora

# What each kind of model is, by the class names a saved config lists under `architectures` (remote code brings
# classes of its own, named by the same convention).
KINDS = {
    AutoModelForCausalLM: (
        "a causal language model",
        set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()),
        ("ForCausalLM", "LMHeadModel"),
    ),
    AutoModelForSequenceClassification: (
        "a sequence-classification (reward) model",
        set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values()),
        ("ForSequenceClassification",),
    ),
}


def device() -> str:
    """Where models run: the GPU when there is one (the job's own, see gpus.placement), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_source(path: str) -> None:
    """A local folder, or else a hub id (`org/name`, dots allowed: `meta-llama/Llama-3.1-8B-Instruct`).

    A string that is neither (e.g. `/models/sft` or `results/models/sft` that does not exist) is a typo, not a hub
    id: say so here rather than let the hub answer with a confusing error.
    """
    if Path(path).expanduser().exists():
        return
    try:
        validate_repo_id(path)
    except HFValidationError:
        raise FileNotFoundError(f"model path {path!r} does not exist (and is not a hub id)") from None


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    _check_source(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load a tokenizer from {path!r}: {err}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _check_kind(path: str, config, auto_class: type) -> None:
    """Refuse a model of another kind, which `auto_class` would load anyway, with a head it invents or drops
    (a reward model as a causal LM: its LM head is tied to the embeddings, so nothing is even missing)."""
    if auto_class not in KINDS or not config.architectures:
        return
    kind, names, suffixes = KINDS[auto_class]
    if not any(arch in names or arch.endswith(suffixes) for arch in config.architectures):
        raise ValueError(f"{path!r} holds a {'/'.join(config.architectures)}, not {kind} ({auto_class.__name__})")


def load_model(
    path: str,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str = torch.float32,
    auto_class: type = AutoModelForCausalLM,
    trainable: bool = False,
) -> PreTrainedModel:
    """Load a model (a causal LM unless `auto_class` says otherwise) from a folder or hub id, from safetensors
    weights (never by unpickling).

    A folder holding a LoRA adapter (training.lora) loads as its base model with the adapter on it, a PeftModel;
    `trainable` leaves the adapter's parameters trainable (a DPO run that continues it)."""
    _check_source(path)
    if lora.is_adapter(path):
        base = load_model(lora.base_of(path), trust_remote_code, dtype, auto_class)
        return lora.with_adapter(base, path, trainable)
    folder = Path(path).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ValueError(
            f"{path!r} is not a model folder: it has no config.json (it holds "
            f"{sorted(p.name for p in folder.iterdir())})"
        )
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read a model config from {path!r}: {err}") from err
    _check_kind(path, config, auto_class)
    try:
        model, info = auto_class.from_pretrained(
            path, trust_remote_code=trust_remote_code, use_safetensors=True, dtype=dtype, output_loading_info=True
        )
    except (OSError, ValueError) as err:
        hint = ""
        if folder.is_dir() and not any(folder.glob("*.safetensors")):
            hint = " (weights are read from safetensors only, never unpickled: save them with save_pretrained)"
        raise ValueError(f"cannot load a model ({auto_class.__name__}) from {path!r}: {err}{hint}") from err
    if info["missing_keys"]:
        # transformers would initialise them at random and only warn: a model that silently is not the one saved.
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"the weights in {path!r} lack {len(missing)} parameters of {type(model).__name__}, "
            f"e.g. {missing[:3]}: it is not such a model"
        )
    return model
