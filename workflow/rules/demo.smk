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
        vocab_size=DEMO["vocab_size"],
    shell:
        "python -m prefselect demo-tokenizer --snippets {input} --out {output} --vocab-size {params.vocab_size} > {log} 2>&1"


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
        model=" ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEMO["model"].items()),
        sft=" ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEMO["sft"].items()),
        seed=config["seed"],
    shell:
        "python -m prefselect --threads {threads} demo-sft --snippets {input.snippets} --tokenizer {input.tokenizer} "
        "--out {output} {params.model} {params.sft} --seed {params.seed} > {log} 2>&1"


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
        pairs=" ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEMO["pairs"].items()),
        seed=config["seed"],
    shell:
        "python -m prefselect --threads {threads} demo-pairs --model {input.model} --snippets {input.snippets} "
        "--out {params.outdir} {params.pairs} --seed {params.seed} > {log} 2>&1"
