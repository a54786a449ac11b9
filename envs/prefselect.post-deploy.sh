#!/usr/bin/env bash
# prefselect itself, into the rule environment that prefselect.yaml made (its dependencies are there already).
# The Snakefile sets PREFSELECT_SOURCE to where the running workflow came from: its checkout, installed editable so
# that every job runs the code the workflow was planned with, or the git repository and tag of a deployed module.
set -euo pipefail
: "${PREFSELECT_SOURCE:?unset: the prefselect Snakefile sets it (or set it to a path or pip requirement yourself)}"
if [ -d "$PREFSELECT_SOURCE" ]; then
    python -m pip install --no-deps --editable "$PREFSELECT_SOURCE"
else
    python -m pip install --no-deps "$PREFSELECT_SOURCE"
fi
