# DPO stages with TRL. The reference is always the SFT model, through its precomputed log-probs.
TRAINING = config["training"]
WARMUP_FRACTION = TRAINING["warmup_fraction"]


rule warmup:
    input:
        sft=local_model(SFT),
        data=f"{OUT}/data/train.parquet",
        ref=ref_shards("train"),
    output:
        directory(f"{OUT}/models/warmup"),
    log:
        f"{OUT}/logs/warmup.log",
    conda:
        "../../envs/prefselect.yaml"
    threads: config["training"]["threads"]
    resources:
        **job_resources("training"),
    params:
        model=input_or("sft", SFT),
        flags=dpo_flags(TRAINING["warmup_epochs"])
        + (f" --fraction {WARMUP_FRACTION}" if WARMUP_FRACTION < 1 else ""),
        checkpoints=checkpoint_dir("warmup"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} train --model {params.model} --data {input.data} "
        "--ref {input.ref} {params.flags} --checkpoint-dir {params.checkpoints} --out {output} > {log} 2>&1"


rule aux:
    input:
        init=local_model(SFT) if config["aux"]["init"] == "sft" else rules.warmup.output,
        data=f"{OUT}/data/val.parquet",
        ref=ref_shards("val"),
    output:
        directory(f"{OUT}/models/aux"),
    log:
        f"{OUT}/logs/aux.log",
    benchmark:
        f"{OUT}/benchmarks/aux.tsv"
    conda:
        "../../envs/prefselect.yaml"
    threads: config["training"]["threads"]
    resources:
        **job_resources("training"),
    params:
        init=input_or("init", SFT),
        flags=dpo_flags(TRAINING["aux_epochs"]),
        checkpoints=checkpoint_dir("aux"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} train --model {params.init} --data {input.data} "
        "--ref {input.ref} {params.flags} --checkpoint-dir {params.checkpoints} --out {output} > {log} 2>&1"


rule final:
    """Continue from θ on a selection: final-{selector}, or with the auto selector's screen_epochs a shorter
    screen-{candidate} run for its tournament."""
    input:
        warmup=rules.warmup.output,
        data=f"{OUT}/data/train.parquet",
        selection=f"{OUT}/selection/{{selector}}.parquet",
        ref=ref_shards("train"),
    output:
        directory(f"{OUT}/models/{{stage}}-{{selector}}"),
    log:
        f"{OUT}/logs/{{stage}}-{{selector}}.log",
    wildcard_constraints:
        stage="final|screen" if SCREEN_EPOCHS else "final",
        selector="|".join(TRAINED + CANDIDATES),
    conda:
        "../../envs/prefselect.yaml"
    threads: config["training"]["threads"]
    resources:
        **job_resources("training"),
    params:
        flags=lambda wildcards: dpo_flags(
            SCREEN_EPOCHS if wildcards.stage == "screen" else TRAINING["final_epochs"],
            wildcards.selector,
        ),
        checkpoints=checkpoint_dir("{stage}-{selector}"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} train --model {input.warmup} --data {input.data} "
        "--selection {input.selection} --ref {input.ref} {params.flags} --checkpoint-dir {params.checkpoints} "
        "--out {output} > {log} 2>&1"
