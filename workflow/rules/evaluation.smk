# Judge the final models against the opponent (the SFT model, or the `full` selector's final model) on
# continuations of held-out prompts, or (the likelihood judge) by their log-probs of the test pairs.
EVAL = config["evaluation"]
EVAL_PROMPTS = EVAL["prompts"] or f"{OUT}/data/val.parquet"
OPPONENT_SAMPLES = "sft" if EVAL["opponent"] == "sft" else "final-full"
LIKELIHOOD = EVAL["judge"]["kind"] == "likelihood"
# Only a reward-model judge loads a model in `evaluate` (VADER is a lexicon, an LLM judge is an HTTP service).
JUDGE_MODEL = EVAL["judge"]["kind"] == "reward_model"
# Held-out log-probs by folder under eval/: of the test pairs (likelihood judge) and of the dev pairs (tournament).
HELDOUT = {"logps": "test", "dev/logps": "dev"}
# What `evaluate` reads of each model; the SFT model's log-probs of the test pairs are the reference ones.
PER_MODEL = f"{OUT}/eval/{'logps' if LIKELIHOOD else 'samples'}/{{model}}.parquet"
OPPONENT = (
    ref_shards("test")
    if LIKELIHOOD and OPPONENT_SAMPLES == "sft"
    else PER_MODEL.format(model=OPPONENT_SAMPLES)
)


rule sample:
    input:
        model=lambda wildcards: (
            local_model(SFT)
            if wildcards.model == "sft"
            else f"{OUT}/models/{wildcards.model}"
        ),
        prompts=EVAL_PROMPTS,
    output:
        f"{OUT}/eval/samples/{{model}}.parquet",
    log:
        f"{OUT}/logs/sample/{{model}}.log",
    wildcard_constraints:
        model="sft|final-(" + "|".join(FINALS) + ")",
    conda:
        "../../envs/prefselect.yaml"
    threads: EVAL["threads"]
    resources:
        **job_resources("evaluation"),
    params:
        model=input_or("model", SFT),
        config=settings("sample"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} sample --config {params.config:q} "
        "--model {params.model} --prompts {input.prompts} --out {output} > {log} 2>&1"


rule heldout_logps:
    """Log-probs of held-out pairs under a trained model: the test pairs (eval/logps/, for the likelihood judge),
    or the dev pairs (eval/dev/logps/, for the auto selector's tournament)."""
    input:
        model=f"{OUT}/models/{{model}}",
        data=lambda wildcards: f"{OUT}/data/{HELDOUT[wildcards.where]}.parquet",
    output:
        f"{OUT}/eval/{{where}}/{{model}}.parquet",
    log:
        f"{OUT}/logs/heldout_logps/{{where}}/{{model}}.log",
    wildcard_constraints:
        where="|".join(HELDOUT),
        model="(final|screen)-(" + "|".join(SELECTORS) + ")",
    conda:
        "../../envs/prefselect.yaml"
    threads: config["scoring"]["threads"]
    resources:
        **job_resources("scoring"),
        **FORWARD_BATCH,
    params:
        config=settings("logps"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} --batch-size {resources.batch_size} logps "
        "--config {params.config:q} "
        "--model {input.model} --data {input.data} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        selections=expand(f"{OUT}/selection/{{selector}}.parquet", selector=FINALS),
        samples=expand(PER_MODEL, model=[f"final-{s}" for s in FINALS]),
        opponent=OPPONENT,
        prompts=[] if LIKELIHOOD else EVAL_PROMPTS,
        data=f"{OUT}/data/train.parquet",
    output:
        json=f"{OUT}/eval/results.json",
        md=f"{OUT}/eval/results.md",
    log:
        f"{OUT}/logs/evaluate.log",
    # Seconds where Snakemake runs, not in a cluster's queue, unless its judge is a reward model on a GPU.
    localrule: not JUDGE_MODEL
    conda:
        "../../envs/prefselect.yaml"
    threads: EVAL["threads"] if JUDGE_MODEL else 1
    resources:
        **(job_resources("evaluation") if JUDGE_MODEL else {"gpu": 0}),
    params:
        names=FINALS,
        config=settings("evaluate"),
    shell:
        "python -m prefselect --threads {threads} --gpus {resources.gpu} evaluate --config {params.config:q} "
        "--names {params.names} --selections {input.selections} --samples {input.samples} "
        "--opponent {input.opponent} --prompts {input.prompts} --data {input.data} --out-json {output.json} "
        "--out-md {output.md} > {log} 2>&1"


rule diagnose:
    input:
        scores=(
            f"{OUT}/scores/crossfit.parquet"
            if config["crossfit"]["folds"]
            else rules.merge_scores.output
        ),
        data=f"{OUT}/data/train.parquet",
    output:
        json=f"{OUT}/eval/deciles.json",
        md=f"{OUT}/eval/deciles.md",
    log:
        f"{OUT}/logs/diagnose.log",
    localrule: True  # seconds, without a model: where Snakemake runs, not in a cluster's queue
    conda:
        "../../envs/prefselect.yaml"
    shell:
        "python -m prefselect diagnose --scores {input.scores} --data {input.data} "
        "--out-json {output.json} --out-md {output.md} > {log} 2>&1"


rule plots:
    input:
        scores=rules.merge_scores.output,
        data=f"{OUT}/data/train.parquet",
        models=expand(f"{OUT}/models/{{stage}}", stage=STAGES),
        results=rules.evaluate.output.json,
        data_report=rules.prepare.output.report,
    output:
        scores=report(
            f"{OUT}/eval/plots/scores.png",
            caption="../report/scores.rst",
            category="Scores",
        ),
        training=report(
            f"{OUT}/eval/plots/training.png",
            caption="../report/training.rst",
            category="Training",
        ),
        results=report(
            f"{OUT}/eval/plots/results.png",
            caption="../report/results.rst",
            category="Results",
        ),
        table=report(
            f"{OUT}/eval/plots/results.html",
            caption="../report/results.rst",
            category="Results",
        ),
        data=report(
            f"{OUT}/eval/plots/data.html",
            caption="../report/data.rst",
            category="Data",
        ),
    log:
        f"{OUT}/logs/plots.log",
    localrule: True  # seconds, without a model
    conda:
        "../../envs/prefselect.yaml"
    params:
        config=settings("plots"),
        logs=lambda wildcards, input: [
            f"{s}={m}/training_log.json" for s, m in zip(STAGES, input.models)
        ],
        outdir=output_folder("scores"),
    shell:
        "python -m prefselect plots --config {params.config:q} --scores {input.scores} --data {input.data} "
        "--training-logs {params.logs} --results {input.results} --data-report {input.data_report} "
        "--out {params.outdir} > {log} 2>&1"
