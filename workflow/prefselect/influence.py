"""Influence of a training pair on the validation loss: IF(d) = ⟨∇_θ ℓ(θ;d), ḡ_val⟩ at the warm-up model θ.

ḡ_val is the mean gradient of the same loss over the validation pairs; LossDiff and IRM are the
forward-only stand-ins for IF. Pairs go through TRL's own tokenization and collation and the loss is TRL's, with the
precomputed reference log-probs, so ℓ is exactly the training loss. Per-pair gradients are batched with torch.func:
vmap over pairs of the gradient of one pair's loss, taken on its two sequences (chosen, rejected). They are
right-padded and run without an attention mask: under causal attention no real token sees the padding after it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from fnmatch import fnmatch

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.func import functional_call, grad, vmap
from transformers import PreTrainedModel

from . import lora
from .io import atomic_path
from .logps import collated_batches, tokenize_pairs
from .settings import Settings
from .tables import TRL_REF
from .training import with_ref_logps

PROJECTION_BLOCK = 2**22  # entries of the projection matrix drawn at a time (32 MiB in float64)


@dataclass(frozen=True)
class InfluenceSettings:
    """The gradients of `val-grad` and `influence`; `of` builds them from the config, whose schema holds every
    default."""

    beta: float
    loss_type: str
    max_length: int
    batch_size: int
    params: list[str] | None  # glob patterns of parameter names; None: all parameters
    projection_dim: int | None  # None: exact inner products
    seed: int  # of the projection

    @classmethod
    def of(cls, s: Settings, projected: bool = True, **changes) -> InfluenceSettings:
        """From a step's settings; those of `val-grad` (`projected` False) project nothing."""
        i = s.influence
        return replace(
            cls(
                beta=s.method.beta,
                loss_type=s.method.loss_type,
                max_length=s.data.max_length,
                batch_size=i.batch_size,
                params=i.params,
                projection_dim=i.projection_dim if projected else None,
                seed=s.seed,
            ),
            **changes,
        )


def differentiable_model(model: PreTrainedModel) -> PreTrainedModel:
    """The model in eval mode (no dropout), frozen (torch.func takes the parameters as inputs), vmap-able."""
    model.eval().requires_grad_(False)
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            # Its check for padding without a mask calls .item(), which vmap cannot batch; our padding needs no mask.
            module.warn_if_padding_and_no_attention_mask = lambda *args: None
    return model


def selected_parameters(model: PreTrainedModel, patterns: list[str] | None) -> dict[str, torch.Tensor]:
    """The parameters whose names match any glob pattern (all of them for None); tied weights appear once.

    A model with a LoRA adapter (training.lora) is trained in its adapter only, so its gradients are taken over the
    adapter's parameters only (LoRA's A and B matrices, as LESS does): the patterns choose among those."""
    named = dict(model.named_parameters())
    adapter = lora.adapter_parameter_names(model)
    if adapter:
        named = {name: p for name, p in named.items() if name in adapter}
    for pattern in patterns or []:
        if not any(fnmatch(name, pattern) for name in named):
            raise ValueError(f"influence.params: {pattern!r} matches no parameter; names are like {list(named)[:4]}")
    return {n: p.detach() for n, p in named.items() if patterns is None or any(fnmatch(n, pat) for pat in patterns)}


def torch_pair_loss(irm: torch.Tensor, loss_type: str) -> torch.Tensor:
    """Differentiable twin of `scoring.pair_loss`: TRL's sigmoid (DPO) or hinge (SLiC) loss of a margin."""
    if loss_type == "sigmoid":
        return torch.nn.functional.softplus(-irm)
    if loss_type == "hinge":
        return torch.relu(1.0 - irm)
    raise ValueError(f"method.loss_type: {loss_type!r} is not one of ['sigmoid', 'hinge']")


def pair_loss_fn(model: PreTrainedModel, beta: float, loss_type: str):
    """ℓ(params; pair) for one pair: input_ids and completion_mask (2, L), reference log-probs (2,)."""

    def loss(params, input_ids, completion_mask, ref_logps):
        logits = functional_call(model, params, (input_ids,), {"use_cache": False}).logits[:, :-1]
        token_logps = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        logratios = (token_logps * completion_mask[:, 1:]).sum(-1) - ref_logps
        return torch_pair_loss(beta * (logratios[0] - logratios[1]), loss_type)

    return loss


def pair_batches(pairs: pd.DataFrame, ref_logps: pd.DataFrame, tokenizer, settings: InfluenceSettings, device):
    """TRL's training batches of `pairs`, a row per pair: yields (indices, (input_ids, completion_mask, ref_logps))."""
    ref = with_ref_logps(pairs, ref_logps).select_columns(list(TRL_REF)).to_list()
    tokenized = tokenize_pairs(pairs, tokenizer, settings.max_length)
    examples = [{**e, **r} for e, r in zip(tokenized.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]), ref)]
    for index, batch in collated_batches(examples, tokenizer.pad_token_id, settings.max_length, settings.batch_size):
        # TRL stacks all chosen rows, then all rejected rows; regroup them as (pairs, 2, length).
        by_pair = [torch.stack(batch[key].chunk(2), dim=1) for key in ("input_ids", "completion_mask")]
        ref_pair = torch.stack([batch[column] for column in TRL_REF], dim=1)
        yield index, (by_pair[0].to(device), by_pair[1].to(device).float(), ref_pair.to(device))


def per_pair_gradients(loss, params: dict, batch: tuple) -> dict[str, torch.Tensor]:
    """∇ℓ(θ; d) for every pair d of the batch: each tensor gains a leading pair dimension."""
    return vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, *batch)


def summed_gradient(loss, params: dict, batch: tuple) -> dict[str, torch.Tensor]:
    """Σ_d ∇ℓ(θ; d) over the batch, without materialising the per-pair gradients."""
    return grad(lambda p: vmap(loss, in_dims=(None, 0, 0, 0))(p, *batch).sum())(params)


def validation_gradient(model, pairs, ref_logps, tokenizer, settings: InfluenceSettings) -> dict[str, torch.Tensor]:
    """ḡ_val: the mean over `pairs` of ∇ℓ(θ; v), for the selected parameters."""
    model = differentiable_model(model)
    params = selected_parameters(model, settings.params)
    loss = pair_loss_fn(model, settings.beta, settings.loss_type)
    total = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
    for _, batch in pair_batches(pairs, ref_logps, tokenizer, settings, model.device):
        for name, g in summed_gradient(loss, params, batch).items():
            total[name] += g.double()
    return {name: (g / len(pairs)).float() for name, g in total.items()}


def _projection_blocks(sizes: dict[str, int], dim: int, seed: int):
    """Row blocks of a Rademacher matrix R (entries ±1/√dim; one row per flattened parameter entry, names sorted).

    Drawn from `seed` in a fixed order, so every call applies the same R, and one block at a time is in memory.
    Yields (name, rows of that parameter, block).
    """
    generator = torch.Generator().manual_seed(seed)
    rows_per_block = max(1, PROJECTION_BLOCK // dim)
    for name in sorted(sizes):
        for start in range(0, sizes[name], rows_per_block):
            rows = slice(start, min(start + rows_per_block, sizes[name]))
            bits = torch.randint(0, 2, (rows.stop - start, dim), generator=generator, dtype=torch.int8)
            yield name, rows, (bits.double() * 2 - 1) / dim**0.5


def project(grads: dict[str, torch.Tensor], dim: int, seed: int) -> torch.Tensor:
    """R·g for each row g of `grads` (tensors with a leading row dimension). E[RᵀR] = I: inner products are
    preserved in expectation, with variance (|g|²|h|² + ⟨g, h⟩² − 2 Σ g_i² h_i²)/dim (Rademacher entries)."""
    first = next(iter(grads.values()))
    out = torch.zeros(len(first), dim, dtype=torch.float64, device=first.device)
    for name, rows, block in _projection_blocks({n: g[0].numel() for n, g in grads.items()}, dim, seed):
        out += grads[name].flatten(1)[:, rows].double() @ block.to(first.device)
    return out


def projection_kernel(vector: dict[str, torch.Tensor], dim: int, seed: int) -> dict[str, torch.Tensor]:
    """RᵀR·v. As ⟨R·g, R·v⟩ = ⟨g, RᵀR·v⟩, one pass over R here projects every per-pair gradient for free."""
    projected = project({n: v[None] for n, v in vector.items()}, dim, seed)[0]
    out = {n: torch.zeros(v.numel(), dtype=torch.float64, device=v.device) for n, v in vector.items()}
    for name, rows, block in _projection_blocks({n: v.numel() for n, v in vector.items()}, dim, seed):
        out[name][rows] += block.to(projected.device) @ projected
    return {n: out[n].view(v.shape) for n, v in vector.items()}


def influence(model, pairs, ref_logps, tokenizer, val_grad: dict, settings: InfluenceSettings) -> pd.DataFrame:
    """`id`, `influence` = ⟨∇ℓ(θ;d), ḡ_val⟩ of every pair d, or ⟨R·∇ℓ(θ;d), R·ḡ_val⟩ with a projection R."""
    model = differentiable_model(model)
    params = selected_parameters(model, settings.params)
    if set(params) != set(val_grad):
        raise ValueError("the validation gradient covers other parameters; recompute it with the same influence.params")
    loss = pair_loss_fn(model, settings.beta, settings.loss_type)
    target = {name: g.to(model.device) for name, g in val_grad.items()}
    if settings.projection_dim:
        target = projection_kernel(target, settings.projection_dim, settings.seed)
    scores = np.empty(len(pairs))
    for index, batch in pair_batches(pairs, ref_logps, tokenizer, settings, model.device):
        grads = per_pair_gradients(loss, params, batch)
        scores[index] = sum(g.flatten(1).double() @ target[n].flatten().double() for n, g in grads.items()).cpu()
    return pd.DataFrame({"id": pairs["id"].to_numpy(), "influence": scores})


def save_val_grad(val_grad: dict[str, torch.Tensor], path: str, settings: InfluenceSettings) -> None:
    """ḡ_val as safetensors, with the loss settings it was taken under (an influence job checks them)."""
    meta = {"loss": json.dumps(_loss_settings(settings))}
    with atomic_path(path) as tmp:
        save_file({n: g.contiguous().cpu() for n, g in val_grad.items()}, str(tmp), metadata=meta)


def load_val_grad(path: str, settings: InfluenceSettings) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as f:
        stored = json.loads(f.metadata()["loss"])
    if stored != _loss_settings(settings):
        raise ValueError(f"{path} was computed with {stored}, not {_loss_settings(settings)}; recompute it")
    return load_file(path)


def _loss_settings(settings: InfluenceSettings) -> dict:
    return {k: v for k, v in asdict(settings).items() if k in ("beta", "loss_type", "max_length")}


def join_influence(scores: pd.DataFrame, influence_table: pd.DataFrame) -> pd.DataFrame:
    """The scores with an `influence` column, so that band rules can select on it; every pair needs a value."""
    table = scores.merge(influence_table[["id", "influence"]], on="id", how="left", validate="one_to_one")
    if table["influence"].isna().any():
        raise ValueError(f"influence is missing for {int(table['influence'].isna().sum())} scored pairs")
    return table
