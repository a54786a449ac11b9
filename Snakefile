"""prefselect: find the preference pairs worth training on for one model, and train it on them."""

import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# Rules call `python -m prefselect`; the package lives in workflow/, so a rule's environment only needs its
# dependencies (envs/prefselect.yaml), not an install of prefselect itself. The prefix keeps Snakemake's own
# (bash strict mode), which setting one replaces.
PACKAGE_ROOT = f"{workflow.basedir}/workflow"
sys.path.insert(0, PACKAGE_ROOT)
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={PACKAGE_ROOT}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)

from prefselect.config import validate as validate_config

# The demo is the configuration when none is given. A --configfile replaces it rather than extending it, so that
# no demo key or demo selector leaks into a user's configuration (keys left out take the schema's defaults).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


config = validate_config(config)


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/sources.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/scoring.smk"
include: "workflow/rules/influence.smk"
include: "workflow/rules/selection.smk"
include: "workflow/rules/evaluation.smk"


if AUTO:

    include: "workflow/rules/tournament.smk"


localrules:
    all,


onsuccess:
    # Each DPO run removes its own checkpoints/{stage}/ once its model is complete; the folder of them goes last.
    if os.path.isdir(f"{OUT}/checkpoints") and not os.listdir(f"{OUT}/checkpoints"):
        os.rmdir(f"{OUT}/checkpoints")


rule all:
    default_target: True
    input:
        f"{OUT}/data/report.json",
        f"{OUT}/scores/scores.parquet",
        expand(f"{OUT}/selection/{{selector}}.parquet", selector=SELECTORS),
        expand(f"{OUT}/models/final-{{selector}}", selector=FINALS),
        f"{OUT}/eval/results.json",
        f"{OUT}/eval/results.md",
        INFLUENCE_TARGETS,
        # The demo's ground truth says where the flipped labels sit in each score.
        f"{OUT}/eval/deciles.md" if config["demo"]["enabled"] else [],
        f"{OUT}/eval/plots/results.png",
        # Which candidate the auto selector chose, and why.
        f"{OUT}/eval/tournament.md" if AUTO else [],
