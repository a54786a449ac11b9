DATA = config["data"]


rule prepare:
    input:
        local_model(SFT),
        [p for p in (DATA["source"], DATA["validation"]) if p and Path(p).suffix],
    output:
        train=f"{OUT}/data/train.parquet",
        val=f"{OUT}/data/val.parquet",
        quarantine=f"{OUT}/data/quarantine.jsonl",
        report=f"{OUT}/data/report.json",
    params:
        validation=f"--validation {DATA['validation']}" if DATA["validation"] else "",
        options=(
            f"--max-length {DATA['max_length']} --val-fraction {DATA['val_fraction']} "
            f"--min-rows {DATA['min_rows']} --seed {config['seed']} {remote_code()}"
        ),
    log:
        f"{OUT}/logs/prepare.log",
    shell:
        "prefselect prepare --source {DATA[source]} {params.validation} --tokenizer {SFT} "
        "--out {OUT}/data {params.options} > {log} 2>&1"


rule ref_logps:
    input:
        local_model(SFT),
        data=f"{OUT}/data/{{split}}.parquet",
    output:
        f"{OUT}/logps/ref/{{split}}/{{shard}}-of-{{shards}}.parquet",
    wildcard_constraints:
        split="train|val",
    params:
        options=f"--max-length {DATA['max_length']} --batch-size {config['scoring']['batch_size']} {remote_code()}",
    log:
        f"{OUT}/logs/ref_logps/{{split}}-{{shard}}-of-{{shards}}.log",
    shell:
        "prefselect --threads {threads} logps --model {SFT} --data {input.data} --shard {wildcards.shard} "
        "--shards {wildcards.shards} {params.options} --out {output} > {log} 2>&1"
