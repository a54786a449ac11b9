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
        selector="|".join(s for s in SELECTORS if s != AUTO),
    conda:
        "../../envs/prefselect.yaml"
    params:
        spec=lambda wildcards: selector_spec(wildcards.selector),
        like=lambda wildcards, input: f"--like {input.like}" if input.like else "",
        seed=config["seed"],
    shell:
        "python -m prefselect select --name {wildcards.selector} --spec {params.spec} --scores {input.scores} "
        "--data {input.data} {params.like} --seed {params.seed} --out {output} > {log} 2>&1"
