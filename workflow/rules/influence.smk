# The Truncated Influence Function (only with influence.enabled): ḡ_val once, IF per shard of training pairs, then
# how well LossDiff and IRM agree with it, and the group study of small, medium and large IF.
INFLUENCE = config["influence"]
INFLUENCE_SHARDS = INFLUENCE["shards"]
IF_GROUPS = ["small", "medium", "large"]

# Job seconds of the forward-only proxies (θ_val, then scores) and of influence, for the agreement report.
BENCHMARKS = {
    "aux": [f"{OUT}/benchmarks/aux.tsv"],
    "score": expand(f"{OUT}/benchmarks/score/{{i}}-of-{SHARDS}.tsv", i=range(SHARDS)),
    "val_grad": [f"{OUT}/benchmarks/val_grad.tsv"],
    "influence": expand(
        f"{OUT}/benchmarks/influence/{{i}}-of-{INFLUENCE_SHARDS}.tsv",
        i=range(INFLUENCE_SHARDS),
    ),
}


rule val_grad:
    input:
        warmup=rules.warmup.output,
        data=f"{OUT}/data/val.parquet",
        ref=ref_shards("val"),
    output:
        f"{OUT}/influence/val_grad.safetensors",
    log:
        f"{OUT}/logs/val_grad.log",
    benchmark:
        f"{OUT}/benchmarks/val_grad.tsv"
    conda:
        "../../envs/prefselect.yaml"
    threads: config["scoring"]["threads"]
    resources:
        **job_resources("scoring"),
    params:
        config=settings("val-grad"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} val-grad --config {params.config:q} "
        "--model {input.warmup} --data {input.data} --ref {input.ref} --out {output} > {log} 2>&1"


rule influence:
    input:
        warmup=rules.warmup.output,
        val_grad=rules.val_grad.output,
        data=f"{OUT}/data/train.parquet",
        ref=ref_shards("train"),
    output:
        f"{OUT}/influence/shards/{{shard}}-of-{{shards}}.parquet",
    log:
        f"{OUT}/logs/influence/{{shard}}-of-{{shards}}.log",
    benchmark:
        f"{OUT}/benchmarks/influence/{{shard}}-of-{{shards}}.tsv"
    conda:
        "../../envs/prefselect.yaml"
    threads: config["scoring"]["threads"]
    resources:
        **job_resources("scoring"),
    params:
        config=settings("influence"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} influence --config {params.config:q} "
        "--model {input.warmup} --val-grad {input.val_grad} --data {input.data} --ref {input.ref} "
        "--shard {wildcards.shard} --shards {wildcards.shards} --out {output} > {log} 2>&1"


rule merge_influence:
    input:
        shards=expand(
            f"{OUT}/influence/shards/{{i}}-of-{INFLUENCE_SHARDS}.parquet",
            i=range(INFLUENCE_SHARDS),
        ),
        data=f"{OUT}/data/train.parquet",
    output:
        f"{OUT}/influence/influence.parquet",
    log:
        f"{OUT}/logs/merge_influence.log",
    localrule: True  # seconds, on tables already computed
    conda:
        "../../envs/prefselect.yaml"
    shell:
        "python -m prefselect merge-influence --shards {input.shards} --data {input.data} --out {output} > {log} 2>&1"


rule join_influence:
    input:
        scores=rules.merge_scores.output,
        influence=rules.merge_influence.output,
    output:
        f"{OUT}/influence/scores.parquet",
    log:
        f"{OUT}/logs/join_influence.log",
    localrule: True
    conda:
        "../../envs/prefselect.yaml"
    shell:
        "python -m prefselect join-influence --scores {input.scores} --influence {input.influence} --out {output} "
        "> {log} 2>&1"


rule agreement:
    input:
        scores=rules.join_influence.output,
        benchmarks=[path for paths in BENCHMARKS.values() for path in paths],
    output:
        json=f"{OUT}/eval/agreement.json",
        md=f"{OUT}/eval/agreement.md",
        png=f"{OUT}/eval/agreement.png",
    log:
        f"{OUT}/logs/agreement.log",
    localrule: True
    conda:
        "../../envs/prefselect.yaml"
    params:
        benchmarks=" ".join(
            f"{stage}={path}" for stage, paths in BENCHMARKS.items() for path in paths
        ),
        config=settings("agreement"),
    shell:
        "python -m prefselect agreement --config {params.config:q} --scores {input.scores} "
        "--benchmarks {params.benchmarks} --out-json {output.json} --out-md {output.md} --out-png {output.png} "
        "> {log} 2>&1"


rule influence_groups:
    input:
        rules.merge_influence.output,
    output:
        expand(f"{OUT}/influence/groups/{{group}}.parquet", group=IF_GROUPS),
    log:
        f"{OUT}/logs/influence_groups.log",
    localrule: True
    conda:
        "../../envs/prefselect.yaml"
    params:
        outdir=output_folder(0),
    shell:
        "python -m prefselect influence-groups --influence {input} --out {params.outdir} > {log} 2>&1"


rule group_train:
    input:
        warmup=rules.warmup.output,
        data=f"{OUT}/data/train.parquet",
        selection=f"{OUT}/influence/groups/{{group}}.parquet",
        ref=ref_shards("train"),
        val=f"{OUT}/data/val.parquet",
        val_ref=ref_shards("val"),
    output:
        directory(f"{OUT}/models/group-{{group}}"),
    log:
        f"{OUT}/logs/group_train/{{group}}.log",
    wildcard_constraints:
        group="|".join(IF_GROUPS),
    conda:
        "../../envs/prefselect.yaml"
    threads: config["training"]["threads"]
    resources:
        **job_resources("training"),
    params:
        config=settings("train", "final"),
        checkpoints=checkpoint_dir("group-{group}"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} train --stage final --config {params.config:q} "
        "--model {input.warmup} --data {input.data} --selection {input.selection} --ref {input.ref} "
        "--eval-data {input.val} --eval-ref {input.val_ref} --checkpoint-dir {params.checkpoints} "
        "--out {output} > {log} 2>&1"


rule group_study:
    input:
        data=f"{OUT}/data/train.parquet",
        influence=rules.merge_influence.output,
        groups=rules.influence_groups.output,
        models=(
            expand(f"{OUT}/models/group-{{group}}", group=IF_GROUPS)
            if INFLUENCE["group_training"]
            else []
        ),
    output:
        json=f"{OUT}/eval/groups.json",
        md=f"{OUT}/eval/groups.md",
        png=f"{OUT}/eval/groups.png" if INFLUENCE["group_training"] else [],
    log:
        f"{OUT}/logs/group_study.log",
    localrule: True
    conda:
        "../../envs/prefselect.yaml"
    shell:
        "python -m prefselect group-study --data {input.data} --influence {input.influence} --groups {input.groups} "
        "--models {input.models} --out-png {output.png} --out-json {output.json} --out-md {output.md} > {log} 2>&1"
