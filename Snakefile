"""prefselect: find the preference pairs worth training on for one model, and train it on them."""

import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# Every job runs `python -m prefselect` from its environment: the one prefselect is installed in (README), or with
# `--sdm conda` envs/prefselect.yaml, whose post-deploy script installs prefselect from PREFSELECT_SOURCE. Planning
# needs only the package's config module, from the environment or else from this checkout.
SOURCE = workflow.current_basedir
try:
    import prefselect
except ImportError:
    if not SOURCE.is_local:
        raise
    sys.path.insert(0, f"{SOURCE.get_path_or_uri(secret_free=True)}/workflow")

from prefselect.config import validate as validate_config
from prefselect.deploy import package_source

os.environ.setdefault("PREFSELECT_SOURCE", package_source(SOURCE))

# The demo is the configuration unless the command line gives one: a config that names a model, data or the demo
# replaces config/config.yaml rather than extending it, so that no demo key or demo selector leaks into it (keys
# left out take the schema's defaults). `--config key=value` alone changes keys of the demo.
if not {"model", "data", "demo"} & set(config):

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


if config["crossfit"]["folds"]:

    include: "workflow/rules/crossfit.smk"


onsuccess:
    # Each DPO run removes its own checkpoints/{stage}/ once its model is complete; the folder of them goes last.
    if os.path.isdir(f"{OUT}/checkpoints") and not os.listdir(f"{OUT}/checkpoints"):
        os.rmdir(f"{OUT}/checkpoints")


rule all:
    default_target: True
    input:
        final_outputs(),
    localrule: True
