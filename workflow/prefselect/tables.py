"""The columns of the tables in prefselect's output contract (README), for every module that writes or reads them."""

# data/{split}.parquet: a pair, plus any extra input columns that `prepare` passes through.
PAIR = ("id", "prompt", "chosen", "rejected")
# Summed completion log-probs under one model: logps/ref/{split}/, eval/logps/, eval/dev/logps/.
LOGPS = ("id", "chosen_logp", "rejected_logp")
# scores/scores.parquet: log-probs under π_ref, θ and θ_val, and the scores computed from them.
SCORES = (
    "id",
    "ref_chosen_logp",
    "ref_rejected_logp",
    "chosen_logp",
    "rejected_logp",
    "aux_chosen_logp",
    "aux_rejected_logp",
    "irm",
    "aux_irm",
    "loss",
    "aux_loss",
    "lossdiff",
)
# What scores/crossfit/{k}-of-{K}.parquet adds to the scores in scores/crossfit.parquet.
CROSSFIT = ("xfit_irm", "xfit_loss")
# selection/{selector}.parquet.
SELECTION = ("id", "selected")
# TRL's names of the precomputed reference log-probs in its training dataset.
TRL_REF = ("ref_chosen_logps", "ref_rejected_logps")
# models/screen-{candidate}/: the checkpoint (Trainer's) that the candidate's final run continues from.
SCREEN_CHECKPOINT = "resume"
