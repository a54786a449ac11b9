DATA = config["data"]


# A hub dataset or tokenizer is a download: where Snakemake runs, which has the internet.
localrules:
    prepare,


rule prepare:
    input:
        sft=local_model(SFT),
        source=local_file(DATA["source"]),
        validation=local_file(DATA["validation"]),
        dev=local_file(DATA["dev"]),
    output:
        train=f"{OUT}/data/train.parquet",
        val=f"{OUT}/data/val.parquet",
        test=f"{OUT}/data/test.parquet",
        dev=f"{OUT}/data/dev.parquet",
        quarantine=f"{OUT}/data/quarantine.jsonl",
        report=f"{OUT}/data/report.json",
    log:
        f"{OUT}/logs/prepare.log",
    conda:
        "../../envs/prefselect.yaml"
    params:
        source=input_or("source", DATA["source"]),
        model=input_or("sft", SFT),
        outdir=output_folder("train"),
        validation=lambda wildcards, input: (
            f"--validation {input.validation or DATA['validation']}"
            if DATA["validation"]
            else ""
        ),
        dev=lambda wildcards, input: (
            f"--dev {input.dev or DATA['dev']} --dev-split {shlex.quote(DATA['dev_split'])}"
            if DATA["dev"]
            else f"--dev-fraction {DATA['dev_fraction'] if AUTO else 0}"
        ),
        options=(
            f"--split {shlex.quote(DATA['split'])} --validation-split {shlex.quote(DATA['validation_split'])} "
            f"--max-length {DATA['max_length']} --val-fraction {DATA['val_fraction']} --test-fraction {DATA['test_fraction']} "
            f"--min-rows {DATA['min_rows']} --seed {config['seed']} {remote_code()}"
        ),
    shell:
        "python -m prefselect prepare --source {params.source} {params.validation} --tokenizer {params.model} "
        "--out {params.outdir} {params.dev} {params.options} > {log} 2>&1"


rule ref_logps:
    input:
        sft=local_model(SFT),
        data=f"{OUT}/data/{{split}}.parquet",
    output:
        f"{OUT}/logps/ref/{{split}}/{{shard}}-of-{{shards}}.parquet",
    log:
        f"{OUT}/logs/ref_logps/{{split}}-{{shard}}-of-{{shards}}.log",
    wildcard_constraints:
        split="train|val|test|dev",
    conda:
        "../../envs/prefselect.yaml"
    threads: config["scoring"]["threads"]
    resources:
        **job_resources("scoring"),
    params:
        model=input_or("sft", SFT),
        options=LOGPS_OPTIONS,
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} logps --model {params.model} --data {input.data} "
        "--shard {wildcards.shard} --shards {wildcards.shards} {params.options} --out {output} > {log} 2>&1"
