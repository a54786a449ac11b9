"""Per-pair scores of the method: implicit reward margins (IRM), DPO losses and LossDiff."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .tables import SCORES

LOSS_TYPES = ("sigmoid", "hinge")


def implicit_reward_margin(
    chosen: np.ndarray, rejected: np.ndarray, ref_chosen: np.ndarray, ref_rejected: np.ndarray, beta: float
) -> np.ndarray:
    """IRM = β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]."""
    return beta * ((chosen - ref_chosen) - (rejected - ref_rejected))


def pair_loss(irm: np.ndarray, loss_type: str) -> np.ndarray:
    """The training loss of each pair as a function of its margin, as TRL defines it."""
    if loss_type == "sigmoid":
        return np.logaddexp(0.0, -irm)  # −log σ(irm), stable for large |irm|
    if loss_type == "hinge":
        return np.maximum(0.0, 1.0 - irm)
    raise ValueError(f"method.loss_type: {loss_type!r} is not one of {list(LOSS_TYPES)}")


LOGP_PAIRS = ("chosen_logp", "rejected_logp", "chosen_logp_ref", "rejected_logp_ref")


def margins_against(logps: pd.DataFrame, ref: pd.DataFrame, of: str, same_pairs: bool = True) -> pd.DataFrame:
    """`logps` joined by id to `ref`'s log-probs (columns suffixed `_ref`), with `h`, the implicit reward margin
    without β in nats: (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)). Both frames hold `id`,
    `chosen_logp`, `rejected_logp`; every pair of `logps` needs its reference, and with `same_pairs` `ref` holds no
    other pair. `of` names the log-probs in the error."""
    paired = logps.merge(ref, on="id", suffixes=("", "_ref"), validate="one_to_one")
    if len(paired) != len(logps) or (same_pairs and len(paired) != len(ref)):
        raise ValueError(f"{of} and the reference were not scored on the same pairs")
    paired["h"] = implicit_reward_margin(*(paired[c].to_numpy(dtype=float) for c in LOGP_PAIRS), beta=1.0)
    return paired


def shard_rows(n_rows: int, shard: int, shards: int) -> slice:
    """Contiguous, deterministic row range of shard `shard` (0-based) out of `shards`."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is outside 0..{shards - 1}")
    bounds = np.linspace(0, n_rows, shards + 1).round().astype(int)
    return slice(bounds[shard], bounds[shard + 1])


def score_table(ref: pd.DataFrame, warm: pd.DataFrame, aux: pd.DataFrame, beta: float, loss_type: str) -> pd.DataFrame:
    """Join log-probs under π_ref, θ and θ_val (each `id`, `chosen_logp`, `rejected_logp`) into the score columns."""
    table = (
        ref.rename(columns={"chosen_logp": "ref_chosen_logp", "rejected_logp": "ref_rejected_logp"})
        .merge(warm, on="id", how="inner", validate="one_to_one")
        .merge(aux.add_prefix("aux_").rename(columns={"aux_id": "id"}), on="id", how="inner", validate="one_to_one")
    )
    if len(table) != len(warm):
        raise ValueError(f"reference log-probs are missing for {len(warm) - len(table)} pairs")
    ref_c, ref_r = table["ref_chosen_logp"].to_numpy(), table["ref_rejected_logp"].to_numpy()
    table["irm"] = implicit_reward_margin(table["chosen_logp"], table["rejected_logp"], ref_c, ref_r, beta)
    table["aux_irm"] = implicit_reward_margin(table["aux_chosen_logp"], table["aux_rejected_logp"], ref_c, ref_r, beta)
    table["loss"] = pair_loss(table["irm"].to_numpy(), loss_type)
    table["aux_loss"] = pair_loss(table["aux_irm"].to_numpy(), loss_type)
    table["lossdiff"] = table["loss"] - table["aux_loss"]
    return table[list(SCORES)]


def merge_shards(shards: list[pd.DataFrame], train_ids: pd.Series) -> pd.DataFrame:
    """Concatenate score shards; every training id must appear exactly once."""
    scores = pd.concat(shards, ignore_index=True)
    duplicated = scores["id"][scores["id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"{len(duplicated)} ids occur in more than one score shard, e.g. {duplicated.iloc[0]!r}")
    missing = set(train_ids) - set(scores["id"])
    extra = set(scores["id"]) - set(train_ids)
    if missing or extra:
        example = next(iter(missing or extra))
        raise ValueError(
            f"score shards miss {len(missing)} training ids and have {len(extra)} unknown ids, e.g. {example!r}"
        )
    return scores.set_index("id").loc[train_ids].reset_index()
