# Jobs that take seconds run where Snakemake runs (on a cluster, the login node) rather than wait in the queue.
localrules:
    select,
    select_matched,


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
    conda:
        "../../envs/prefselect.yaml"
    params:
        config=selector_settings("select"),
        like=lambda wildcards, input: f"--like {input.like}" if input.like else "",
    shell:
        "python -m prefselect select --config {params.config} --selector {wildcards.selector} "
        "--scores {input.scores} --data {input.data} {params.like} --out {output} > {log} 2>&1"


# A selection with a `like` waits for another selection: a rule of its own, so that no rule depends on itself (and
# `snakemake --until select` stops at the selections without one).
use rule select as select_matched with:
    wildcard_constraints:
        selector="|".join(MATCHED) or "^$",
