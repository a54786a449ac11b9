# Judge the final models against the SFT model on continuations of held-out prompts.
EVAL = config["evaluation"]
EVAL_PROMPTS = EVAL["prompts"] or f"{OUT}/data/val.parquet"


rule sample:
    input:
        model=lambda wildcards: (
            local_model(SFT)
            if wildcards.model == "sft"
            else f"{OUT}/models/{wildcards.model}"
        ),
        prompts=EVAL_PROMPTS,
    output:
        f"{OUT}/eval/samples/{{model}}.parquet",
    log:
        f"{OUT}/logs/sample/{{model}}.log",
    wildcard_constraints:
        model="sft|final-(" + "|".join(SELECTORS) + ")",
    conda:
        "../../envs/prefselect.yaml"
    params:
        model=input_or("model", SFT),
        options=f"--samples {EVAL['samples']} --max-new-tokens {EVAL['max_new_tokens']} --seed {config['seed']}",
    shell:
        "python -m prefselect --threads {threads} sample --model {params.model} --prompts {input.prompts} "
        "{params.options} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        selections=expand(f"{OUT}/selection/{{selector}}.parquet", selector=SELECTORS),
        samples=expand(
            f"{OUT}/eval/samples/final-{{selector}}.parquet", selector=SELECTORS
        ),
        opponent=f"{OUT}/eval/samples/sft.parquet",
        prompts=EVAL_PROMPTS,
        data=f"{OUT}/data/train.parquet",
    output:
        json=f"{OUT}/eval/results.json",
        md=f"{OUT}/eval/results.md",
    log:
        f"{OUT}/logs/evaluate.log",
    conda:
        "../../envs/prefselect.yaml"
    params:
        names=SELECTORS,
        judge=EVAL["judge"],
    shell:
        "python -m prefselect evaluate --names {params.names} --selections {input.selections} --samples {input.samples} "
        "--opponent {input.opponent} --prompts {input.prompts} --data {input.data} --judge {params.judge} "
        "--out-json {output.json} --out-md {output.md} > {log} 2>&1"


rule diagnose:
    input:
        scores=rules.merge_scores.output,
        data=f"{OUT}/data/train.parquet",
    output:
        json=f"{OUT}/eval/deciles.json",
        md=f"{OUT}/eval/deciles.md",
    conda:
        "../../envs/prefselect.yaml"
    log:
        f"{OUT}/logs/diagnose.log",
    shell:
        "python -m prefselect diagnose --scores {input.scores} --data {input.data} "
        "--out-json {output.json} --out-md {output.md} > {log} 2>&1"
