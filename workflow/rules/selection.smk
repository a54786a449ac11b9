# Jobs that take seconds run where Snakemake runs (on a cluster, the login node) rather than wait in the queue:
# each rule here is a local rule.


rule select:
    input:
        scores=selector_scores,
        data=f"{OUT}/data/train.parquet",
        like=like_selection,
    output:
        f"{OUT}/selection/{{selector}}.parquet",
    log:
        f"{OUT}/logs/select/{{selector}}.log",
    wildcard_constraints:
        selector="|".join(s for s in SELECTORS if s != AUTO and s not in MATCHED),
    localrule: True
    conda:
        "../../envs/prefselect.yaml"
    params:
        config=selector_settings("select"),
    shell:
        "python -m prefselect select --config {params.config:q} --selector {wildcards.selector} "
        "--scores {input.scores} --data {input.data} --like {input.like} --out {output} > {log} 2>&1"


# A selection with a `like` waits for another selection: a rule of its own, so that no rule depends on itself (and
# `snakemake --until select` stops at the selections without one).
use rule select as select_matched with:
    wildcard_constraints:
        selector="|".join(MATCHED) or "^$",
    localrule: True  # `use rule ... with` sets localrule anew


rule export:
    """A selection's kept pairs as the user's own input rows (their columns and format, in input order, plus `id`),
    for any trainer that reads the input: selected/{selector}.jsonl and .parquet."""
    input:
        selection=f"{OUT}/selection/{{selector}}.parquet",
        source=local_file(config["data"]["source"]),
    output:
        jsonl=f"{OUT}/selected/{{selector}}.jsonl",
        parquet=f"{OUT}/selected/{{selector}}.parquet",
    log:
        f"{OUT}/logs/export/{{selector}}.log",
    wildcard_constraints:
        selector="|".join(SELECTORS),
    localrule: True
    conda:
        "../../envs/prefselect.yaml"
    params:
        source=input_or("source", config["data"]["source"]),
        config=settings("export"),
    shell:
        "python -m prefselect export --config {params.config:q} --selection {input.selection} --source {params.source} "
        "--out-jsonl {output.jsonl} --out-parquet {output.parquet} > {log} 2>&1"


rule selections:
    """Selection only (`snakemake selections`): data, reference log-probs, warm-up, θ_val, scores and every
    selection, each exported for any trainer; no final run, sampling or evaluation. The auto selector is not among
    them: it chooses by its candidates' final models (`snakemake {outdir}/selected/auto.jsonl` runs them).
    """
    input:
        expand(
            f"{OUT}/selected/{{selector}}.{{ext}}",
            selector=[s for s in SELECTORS if s != AUTO],
            ext=["jsonl", "parquet"],
        ),
    localrule: True
