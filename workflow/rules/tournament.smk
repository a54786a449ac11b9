# The auto selector: each candidate's model judged on the dev pairs by forward passes, the winner adopted.
CANDIDATE_MODELS = [f"{TOURNAMENT_STAGE}-{c}" for c in CANDIDATES]


localrules:
    tournament,  # seconds, on log-probs already computed
    tournament_report,


rule tournament:
    input:
        logps=expand(f"{OUT}/eval/dev/logps/{{model}}.parquet", model=CANDIDATE_MODELS),
        ref=ref_shards("dev"),
        selections=expand(f"{OUT}/selection/{{selector}}.parquet", selector=CANDIDATES),
    output:
        selection=f"{OUT}/selection/{AUTO}.parquet",
        choice=f"{OUT}/eval/dev/choice.json",
    log:
        f"{OUT}/logs/tournament.log",
    conda:
        "../../envs/prefselect.yaml"
    params:
        auto=AUTO,
        names=CANDIDATES,
        config=shlex.quote(step_config(config, "tournament", selector=AUTO)),
    shell:
        "python -m prefselect tournament --config {params.config} --selector {params.auto} --names {params.names} "
        "--logps {input.logps} --ref {input.ref} --selections {input.selections} "
        "--out-selection {output.selection} --out-choice {output.choice} > {log} 2>&1"


if not SCREEN_EPOCHS:

    localrules:
        adopt_winner,  # hard links

    rule adopt_winner:
        """Without screening, the winner's final model is final-{AUTO}, linked rather than trained again."""
        input:
            choice=rules.tournament.output.choice,
            models=expand(f"{OUT}/models/final-{{selector}}", selector=CANDIDATES),
        output:
            directory(f"{OUT}/models/final-{AUTO}"),
        log:
            f"{OUT}/logs/adopt_winner.log",
        conda:
            "../../envs/prefselect.yaml"
        params:
            models=lambda wildcards, input: [
                f"{c}={m}" for c, m in zip(CANDIDATES, input.models)
            ],
        shell:
            "python -m prefselect adopt-winner --choice {input.choice} --models {params.models} --out {output} > {log} 2>&1"


rule tournament_report:
    input:
        choice=rules.tournament.output.choice,
        results=rules.evaluate.output.json,
    output:
        json=f"{OUT}/eval/tournament.json",
        md=report(
            f"{OUT}/eval/tournament.md",
            caption="../report/tournament.rst",
            category="Tournament",
        ),
        png=report(
            f"{OUT}/eval/tournament.png",
            caption="../report/tournament.rst",
            category="Tournament",
        ),
    log:
        f"{OUT}/logs/tournament_report.log",
    conda:
        "../../envs/prefselect.yaml"
    params:
        config=settings("tournament-report"),
    shell:
        "python -m prefselect tournament-report --config {params.config} --choice {input.choice} "
        "--results {input.results} --out-json {output.json} --out-md {output.md} --out-png {output.png} > {log} 2>&1"
