DATA = config["data"]


# A hub dataset or tokenizer is a download: where Snakemake runs, which has the internet.


rule prepare:
    input:
        sft=local_model(SFT),
        source=local_file(DATA["source"]),
        validation=local_file(DATA["validation"]),
        dev=local_file(DATA["dev"]),
        test=local_file(DATA["test"]),
    output:
        train=f"{OUT}/data/train.parquet",
        val=f"{OUT}/data/val.parquet",
        test=f"{OUT}/data/test.parquet",
        dev=f"{OUT}/data/dev.parquet",
        quarantine=f"{OUT}/data/quarantine.jsonl",
        report=f"{OUT}/data/report.json",
    log:
        f"{OUT}/logs/prepare.log",
    localrule: True  # a hub dataset or tokenizer is a download: where Snakemake runs, which has the internet
    conda:
        "../../envs/prefselect.yaml"
    params:
        source=input_or("source", DATA["source"]),
        model=input_or("sft", SFT),
        outdir=output_folder("train"),
        validation=input_or("validation", DATA["validation"]),
        test=input_or("test", DATA["test"]),
        # Dev pairs: the file given, or a share of the validation pairs where an auto selector chooses on them.
        dev=input_or("dev", DATA["dev"]),
        hold_out_dev="--hold-out-dev" if AUTO and not DATA["dev"] else "",
        config=settings("prepare"),
    shell:
        "python -m prefselect prepare --config {params.config:q} --source {params.source} --validation {params.validation} "
        "--tokenizer {params.model} --out {params.outdir} --dev {params.dev} {params.hold_out_dev} "
        "--test {params.test} > {log} 2>&1"


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
        **FORWARD_BATCH,
    params:
        model=input_or("sft", SFT),
        config=settings("logps"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} --batch-size {resources.batch_size} logps "
        "--config {params.config:q} "
        "--model {params.model} --data {input.data} --shard {wildcards.shard} --shards {wildcards.shards} "
        "--out {output} > {log} 2>&1"
