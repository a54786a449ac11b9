def like_selection(wildcards):
    like = config["selectors"][wildcards.selector].get("like")
    return [f"{OUT}/selection/{like}.parquet"] if like else []


rule select:
    input:
        scores=rules.merge_scores.output,
        data=f"{OUT}/data/train.parquet",
        like=like_selection,
    output:
        f"{OUT}/selection/{{selector}}.parquet",
    wildcard_constraints:
        selector="|".join(SELECTORS),
    params:
        spec=lambda wildcards: selector_spec(wildcards.selector),
        like=lambda wildcards, input: f"--like {input.like}" if input.like else "",
        seed=config["seed"],
    log:
        f"{OUT}/logs/select/{{selector}}.log",
    shell:
        "prefselect select --name {wildcards.selector} --spec {params.spec} --scores {input.scores} "
        "--data {input.data} {params.like} --seed {params.seed} --out {output} > {log} 2>&1"
