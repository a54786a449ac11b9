"""LoRA (`training.lora`): every DPO stage trains an adapter on the SFT model instead of all of its weights.

A trained model is then a folder holding an adapter (`adapter_config.json`, PEFT's format) and the tokenizer. Its
`base_model_name_or_path` names the SFT model as the training job was given it: a hub id, or a folder, which is
relative to the workflow's working directory (e.g. `results/models/sft`). `base_of` finds such a folder also from
elsewhere, by looking for it under each folder above the adapter. `models.load_model` loads any adapter folder as
its base plus the adapter, so every step that reads a model reads adapters with no flag.

peft is an optional dependency (the `lora` extra); only what trains or loads an adapter imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
# A continued adapter (θ_val, a final run) is first copied by TRL into a reference adapter of this name, which
# prefselect never uses: its reference is the SFT model, through precomputed log-probs.
TRL_REF_ADAPTER = "ref"


def require_peft():
    """The peft module, or an error that says which config key needs it and how to install it."""
    try:
        import peft
    except ImportError:
        raise ImportError(
            "config key training.lora (or a model folder holding a LoRA adapter) needs peft: "
            "pip install 'prefselect[lora]' (or pip install peft)"
        ) from None
    return peft


def is_adapter(path: str | Path) -> bool:
    """Whether `path` is a folder holding a PEFT adapter rather than a whole model."""
    folder = Path(path).expanduser()
    return folder.is_dir() and (folder / ADAPTER_CONFIG).is_file()


def recorded_base(adapter: str | Path) -> str:
    """The base model as the adapter records it."""
    base = json.loads((Path(adapter).expanduser() / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"the adapter in {str(adapter)!r} does not name its base model (base_model_name_or_path)")
    return base


def base_of(adapter: str | Path) -> str:
    """Where the base of the adapter in folder `adapter` is: as recorded when it is absolute, a hub id or exists from
    here; else the recorded relative folder under the nearest folder above the adapter that holds it (so an adapter
    of `results/models/final-x`, based on `results/models/sft`, loads from any working directory)."""
    base = recorded_base(adapter)
    path = Path(base).expanduser()
    if path.is_absolute() or path.exists():
        return base
    for above in Path(adapter).expanduser().resolve().parents:
        if (above / path).is_dir():
            return str(above / path)
    return base  # a hub id, or a folder that is gone: the loader says which


def lora_config(spec: dict):
    """PEFT's LoraConfig of `training.lora` (validated, defaults filled in by the schema)."""
    peft = require_peft()
    modules = spec["target_modules"]
    return peft.LoraConfig(
        r=spec["r"],
        lora_alpha=spec["alpha"],
        lora_dropout=spec["dropout"],
        target_modules=modules if isinstance(modules, str) else list(modules),
        task_type="CAUSAL_LM",
    )


def with_adapter(base_model, adapter: str | Path, trainable: bool = False):
    """`base_model` with the adapter of folder `adapter` on it.

    To keep training it (`trainable`), a PeftModel, as TRL takes it. Otherwise the base model itself, whose layers
    PEFT has wrapped in place (each adds its adapter's update): the same class as a model without an adapter, so
    that every step runs it as it runs any model, unmerged (the adapter's parameters stay apart, for influence).
    """
    peft = require_peft()
    model = peft.PeftModel.from_pretrained(base_model, str(adapter), is_trainable=trainable)
    return model if trainable else model.get_base_model()


def adapter_parameter_names(model) -> set[str]:
    """The names of the adapter's own parameters (LoRA's A and B) in `model`; none for a model without adapter."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return set()

    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            for adapter_name in module.active_adapters:
                for layer_name in module.adapter_layer_names:
                    layer = getattr(module, layer_name)
                    if adapter_name in layer:
                        names |= {
                            f"{module_name}.{layer_name}.{adapter_name}.{n}"
                            for n, _ in layer[adapter_name].named_parameters()
                        }
    return names


def merge_into_folder(folder: Path, load_model) -> None:
    """Replace the adapter in `folder` by the merged model: base weights plus the adapter's update, a plain model
    folder that loads without peft (the tokenizer and training log stay)."""
    merged = load_model(str(folder), trainable=True).merge_and_unload()
    for name in (ADAPTER_CONFIG, "adapter_model.safetensors", "README.md"):
        (folder / name).unlink(missing_ok=True)
    merged.save_pretrained(str(folder))
