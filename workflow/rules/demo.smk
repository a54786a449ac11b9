# The built-in demo: movie-review snippets → tokenizer → tiny SFT model → labelled pairs with known flips.
DEMO = config["demo"]


# A download: where Snakemake runs, which has the internet that a cluster's compute nodes often lack.
localrules:
    demo_snippets,


rule demo_snippets:
    output:
        f"{OUT}/demo/snippets.parquet",
    log:
        f"{OUT}/logs/demo_snippets.log",
    conda:
        "../../envs/prefselect.yaml"
    params:
        local_copy=f"--local-copy {DEMO['snippets']}" if DEMO["snippets"] else "",
    shell:
        "python -m prefselect demo-snippets --out {output} {params.local_copy} > {log} 2>&1"


rule demo_tokenizer:
    input:
        rules.demo_snippets.output,
    output:
        directory(f"{OUT}/demo/tokenizer"),
    log:
        f"{OUT}/logs/demo_tokenizer.log",
    conda:
        "../../envs/prefselect.yaml"
    params:
        config=settings("demo-tokenizer"),
    shell:
        "python -m prefselect demo-tokenizer --config {params.config} --snippets {input} --out {output} > {log} 2>&1"


rule demo_sft:
    input:
        snippets=rules.demo_snippets.output,
        tokenizer=rules.demo_tokenizer.output,
    output:
        directory(f"{OUT}/models/sft"),
    log:
        f"{OUT}/logs/demo_sft.log",
    conda:
        "../../envs/prefselect.yaml"
    threads: 2
    params:
        config=settings("demo-sft"),
    shell:
        "python -m prefselect --threads {threads} demo-sft --config {params.config} --snippets {input.snippets} "
        "--tokenizer {input.tokenizer} --out {output} > {log} 2>&1"


rule demo_pairs:
    input:
        model=rules.demo_sft.output,
        snippets=rules.demo_snippets.output,
    output:
        train=f"{OUT}/demo/train.jsonl",
        val=f"{OUT}/demo/val.jsonl",
        dev=f"{OUT}/demo/dev.jsonl",
        eval_prompts=f"{OUT}/demo/eval_prompts.jsonl",
    log:
        f"{OUT}/logs/demo_pairs.log",
    conda:
        "../../envs/prefselect.yaml"
    threads: 2
    params:
        outdir=output_folder("train"),
        config=settings("demo-pairs"),
    shell:
        "python -m prefselect --threads {threads} demo-pairs --config {params.config} --model {input.model} "
        "--snippets {input.snippets} --out {params.outdir} > {log} 2>&1"
