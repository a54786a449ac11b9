# Score every training pair, one job per shard, then merge.


rule score:
    input:
        warmup=rules.warmup.output,
        aux=rules.aux.output,
        data=f"{OUT}/data/train.parquet",
        ref=f"{OUT}/logps/ref/train/{{shard}}-of-{{shards}}.parquet",
    output:
        f"{OUT}/scores/shards/{{shard}}-of-{{shards}}.parquet",
    log:
        f"{OUT}/logs/score/{{shard}}-of-{{shards}}.log",
    benchmark:
        f"{OUT}/benchmarks/score/{{shard}}-of-{{shards}}.tsv"
    conda:
        "../../envs/prefselect.yaml"
    threads: config["scoring"]["threads"]
    resources:
        **job_resources("scoring"),
        **FORWARD_BATCH,
    params:
        config=settings("score"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} --batch-size {resources.batch_size} score "
        "--config {params.config:q} "
        "--warmup {input.warmup} --aux {input.aux} --data {input.data} --ref {input.ref} --out {output} > {log} 2>&1"


rule merge_scores:
    input:
        shards=expand(f"{OUT}/scores/shards/{{i}}-of-{SHARDS}.parquet", i=range(SHARDS)),
        data=f"{OUT}/data/train.parquet",
    output:
        f"{OUT}/scores/scores.parquet",
    log:
        f"{OUT}/logs/merge_scores.log",
    localrule: True  # seconds: not worth a place in a cluster's queue
    conda:
        "../../envs/prefselect.yaml"
    shell:
        "python -m prefselect merge-scores --shards {input.shards} --data {input.data} --out {output} > {log} 2>&1"


# An external score from a data column takes seconds and no model; a reward model's margin is a GPU job.
# Alignment Potential adds the SFT model's mean per-token log-probs (its reference log-probs, and the tokenizer).
EXTERNAL = {
    s: spec for s, spec in config["selectors"].items() if spec["kind"] in EXTERNAL_KINDS
}
BY_REWARD_MODEL = [s for s, spec in EXTERNAL.items() if "reward_model" in spec]


rule external_score:
    input:
        data=f"{OUT}/data/train.parquet",
        reward_model=reward_model,
        sft=sft_logps,
    output:
        f"{OUT}/scores/external/{{selector}}.parquet",
    log:
        f"{OUT}/logs/external_score/{{selector}}.log",
    wildcard_constraints:
        selector="|".join(s for s in EXTERNAL if s not in BY_REWARD_MODEL) or "^$",
    localrule: True  # a data column's score: seconds
    conda:
        "../../envs/prefselect.yaml"
    resources:
        gpu=0,
    params:
        config=selector_settings("external-score"),
        tokenizer=sft_tokenizer,
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} external-score --config {params.config:q} "
        "--selector {wildcards.selector} --data {input.data} --ref {input.sft} --tokenizer {params.tokenizer} --out {output} > {log} 2>&1"


use rule external_score as reward_margin with:
    wildcard_constraints:
        selector="|".join(BY_REWARD_MODEL) or "^$",
    localrule: False
    threads: config["scoring"]["threads"]
    resources:
        **job_resources("scoring"),
