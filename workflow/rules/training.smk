# DPO stages with TRL. The reference is always the SFT model, through its precomputed log-probs.


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
        config=settings("train", "warmup"),
        checkpoints=checkpoint_dir("warmup"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} train --stage warmup --config {params.config:q} "
        "--model {params.model} --data {input.data} --ref {input.ref} --checkpoint-dir {params.checkpoints} "
        "--out {output} > {log} 2>&1"


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
        config=settings("train", "aux"),
        checkpoints=checkpoint_dir("aux"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} train --stage aux --config {params.config:q} "
        "--model {params.init} --data {input.data} --ref {input.ref} --checkpoint-dir {params.checkpoints} "
        "--out {output} > {log} 2>&1"


rule final:
    """Continue from θ on a selection: final-{selector}; with the auto selector's screen_epochs, each candidate's
    final run stopped early (screen-{candidate}) for its tournament, and a candidate's final run continues it.
    """
    input:
        warmup=rules.warmup.output,
        screen=screen_run,
        data=f"{OUT}/data/train.parquet",
        selection=f"{OUT}/selection/{{selector}}.parquet",
        ref=ref_shards("train"),
    output:
        directory(f"{OUT}/models/{{stage}}-{{selector}}"),
    log:
        f"{OUT}/logs/{{stage}}-{{selector}}.log",
    benchmark:
        f"{OUT}/benchmarks/{{stage}}-{{selector}}.tsv"
    wildcard_constraints:
        stage="final|screen" if SCREEN_EPOCHS else "final",
        selector="|".join(TRAINED + CANDIDATES),
    conda:
        "../../envs/prefselect.yaml"
    threads: config["training"]["threads"]
    resources:
        **job_resources("training"),
    params:
        config=selector_settings("train", "{stage}"),
        checkpoints=checkpoint_dir("{stage}-{selector}"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} train --stage {wildcards.stage} "
        "--selector {wildcards.selector} --config {params.config:q} --model {input.warmup} --data {input.data} "
        "--selection {input.selection} --ref {input.ref} --checkpoint-dir {params.checkpoints} "
        "--continue-from {input.screen} --out {output} > {log} 2>&1"
