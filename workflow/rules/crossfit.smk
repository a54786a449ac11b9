# Cross-fitted scores (crossfit.folds: K): K warm-ups from the SFT model, each on all folds but one, and each
# scoring the pairs of the fold it left out. The warm-ups train in parallel on a cluster, like the final runs.
FOLDS = config["crossfit"]["folds"]


rule crossfit_warmup:
    input:
        sft=local_model(SFT),
        data=f"{OUT}/data/train.parquet",
        ref=ref_shards("train"),
    output:
        directory(f"{OUT}/models/xfit-{{fold}}"),
    log:
        f"{OUT}/logs/xfit-{{fold}}.log",
    wildcard_constraints:
        fold=r"\d+",
    conda:
        "../../envs/prefselect.yaml"
    threads: config["training"]["threads"]
    resources:
        **job_resources("training"),
    params:
        model=input_or("sft", SFT),
        config=settings("train", "crossfit"),
        checkpoints=checkpoint_dir("xfit-{fold}"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} train --stage crossfit "
        "--holdout-fold {wildcards.fold} --config {params.config:q} --model {params.model} --data {input.data} "
        "--ref {input.ref} --checkpoint-dir {params.checkpoints} --out {output} > {log} 2>&1"


rule crossfit_score:
    input:
        model=rules.crossfit_warmup.output,
        data=f"{OUT}/data/train.parquet",
        ref=ref_shards("train"),
    output:
        f"{OUT}/scores/crossfit/{{fold}}-of-{FOLDS}.parquet",
    log:
        f"{OUT}/logs/crossfit_score/{{fold}}-of-{FOLDS}.log",
    conda:
        "../../envs/prefselect.yaml"
    threads: config["scoring"]["threads"]
    resources:
        **job_resources("scoring"),
        **FORWARD_BATCH,
    params:
        config=settings("crossfit-score"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} --batch-size {resources.batch_size} crossfit-score "
        "--config {params.config:q} "
        "--model {input.model} --data {input.data} --ref {input.ref} --fold {wildcards.fold} --out {output} "
        "> {log} 2>&1"


rule join_crossfit:
    input:
        scores=rules.merge_scores.output,
        folds=expand(
            f"{OUT}/scores/crossfit/{{fold}}-of-{FOLDS}.parquet", fold=range(FOLDS)
        ),
    output:
        f"{OUT}/scores/crossfit.parquet",
    log:
        f"{OUT}/logs/join_crossfit.log",
    localrule: True
    conda:
        "../../envs/prefselect.yaml"
    shell:
        "python -m prefselect join-crossfit --scores {input.scores} --folds {input.folds} --out {output} > {log} 2>&1"
