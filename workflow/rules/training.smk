# DPO stages with TRL. The reference is always the SFT model, through its precomputed log-probs.
TRAINING = config["training"]


rule warmup:
    input:
        local_model(SFT),
        data=f"{OUT}/data/train.parquet",
        ref=ref_shards("train"),
    output:
        directory(f"{OUT}/models/warmup"),
    params:
        flags=dpo_flags(TRAINING["warmup_epochs"]),
    log:
        f"{OUT}/logs/warmup.log",
    shell:
        "prefselect --threads {threads} train --model {SFT} --data {input.data} --ref {input.ref} "
        "{params.flags} --out {output} > {log} 2>&1"


rule aux:
    input:
        init=local_model(SFT) if config["aux"]["init"] == "sft" else rules.warmup.output,
        data=f"{OUT}/data/val.parquet",
        ref=ref_shards("val"),
    output:
        directory(f"{OUT}/models/aux"),
    params:
        init=SFT if config["aux"]["init"] == "sft" else rules.warmup.output[0],
        flags=dpo_flags(TRAINING["aux_epochs"]),
    log:
        f"{OUT}/logs/aux.log",
    shell:
        "prefselect --threads {threads} train --model {params.init} --data {input.data} --ref {input.ref} "
        "{params.flags} --out {output} > {log} 2>&1"


rule final:
    input:
        warmup=rules.warmup.output,
        data=f"{OUT}/data/train.parquet",
        selection=f"{OUT}/selection/{{selector}}.parquet",
        ref=ref_shards("train"),
    output:
        directory(f"{OUT}/models/final-{{selector}}"),
    params:
        flags=dpo_flags(TRAINING["final_epochs"]),
    log:
        f"{OUT}/logs/final-{{selector}}.log",
    shell:
        "prefselect --threads {threads} train --model {input.warmup} --data {input.data} "
        "--selection {input.selection} --ref {input.ref} {params.flags} --out {output} > {log} 2>&1"
