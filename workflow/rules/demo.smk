# The built-in demo: movie-review snippets → tokenizer → tiny SFT model → labelled pairs with known flips, or (task
# human_labels) pairs of the rated texts labelled by single human ratings, with gold test pairs.
DEMO = config["demo"]
HUMAN_LABELS = DEMO["task"] == "human_labels"
# The texts the tokenizer and the SFT model learn from: the rated texts themselves in the human-label case.
DEMO_TEXTS = f"{OUT}/demo/{'rated_snippets' if HUMAN_LABELS else 'snippets'}.parquet"


rule demo_snippets:
    output:
        f"{OUT}/demo/snippets.parquet",
    log:
        f"{OUT}/logs/demo_snippets.log",
    # A download: where Snakemake runs, which has the internet that a cluster's compute nodes often lack.
    localrule: True
    conda:
        "../../envs/prefselect.yaml"
    params:
        local_copy=DEMO["snippets"] or "",
    shell:
        "python -m prefselect demo-snippets --out {output} --local-copy {params.local_copy} > {log} 2>&1"


rule demo_tokenizer:
    input:
        DEMO_TEXTS,
    output:
        directory(f"{OUT}/demo/tokenizer"),
    log:
        f"{OUT}/logs/demo_tokenizer.log",
    conda:
        "../../envs/prefselect.yaml"
    params:
        config=settings("demo-tokenizer"),
    shell:
        "python -m prefselect demo-tokenizer --config {params.config:q} --snippets {input} --out {output} > {log} 2>&1"


rule demo_sft:
    input:
        snippets=DEMO_TEXTS,
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
        "python -m prefselect --threads {threads} demo-sft --config {params.config:q} --snippets {input.snippets} "
        "--tokenizer {input.tokenizer} --out {output} > {log} 2>&1"


if HUMAN_LABELS:

    rule demo_rated_snippets:
        output:
            f"{OUT}/demo/rated_snippets.parquet",
        log:
            f"{OUT}/logs/demo_rated_snippets.log",
        localrule: True  # a download, as demo_snippets
        conda:
            "../../envs/prefselect.yaml"
        params:
            local_copy=DEMO["snippets"] or "",
            config=settings("demo-rated-snippets"),
        shell:
            "python -m prefselect demo-rated-snippets --config {params.config:q} --out {output} "
            "--local-copy {params.local_copy} > {log} 2>&1"

    rule demo_rated_pairs:
        input:
            model=local_model(SFT),  # the demo's, or the user's own (model.path, model.gguf)
            snippets=rules.demo_rated_snippets.output,
        output:
            train=f"{OUT}/demo/train.jsonl",
            val=f"{OUT}/demo/val.jsonl",
            dev=f"{OUT}/demo/dev.jsonl",
            test=f"{OUT}/demo/test.jsonl",
        log:
            f"{OUT}/logs/demo_rated_pairs.log",
        conda:
            "../../envs/prefselect.yaml"
        params:
            model=input_or("model", SFT),
            outdir=output_folder("train"),
            config=settings("demo-rated-pairs"),
        shell:
            "python -m prefselect demo-rated-pairs --config {params.config:q} --model {params.model} "
            "--snippets {input.snippets} --out {params.outdir} > {log} 2>&1"

else:

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
            "python -m prefselect --threads {threads} demo-pairs --config {params.config:q} --model {input.model} "
            "--snippets {input.snippets} --out {params.outdir} > {log} 2>&1"
