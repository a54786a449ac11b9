# The auto selector: each candidate's model judged on the dev pairs by forward passes, the winner adopted. With
# finalists, successive halving: every candidate's screen run is judged first (the screen rung, a checkpoint of
# the DAG), and only the finalists it names continue to the final runs that the tournament judges.


if FINALISTS:

    checkpoint screen_rung:
        input:
            logps=expand(f"{OUT}/eval/dev/logps/screen-{{c}}.parquet", c=CANDIDATES),
            ref=ref_shards("dev"),
            selections=expand(f"{OUT}/selection/{{c}}.parquet", c=CANDIDATES),
        output:
            f"{OUT}/eval/dev/screen_rung.json",
        log:
            f"{OUT}/logs/screen_rung.log",
        localrule: True
        conda:
            "../../envs/prefselect.yaml"
        params:
            auto=AUTO,
            names=CANDIDATES,
            config=settings("screen-rung", selector=AUTO),
        shell:
            "python -m prefselect screen-rung --config {params.config:q} --selector {params.auto} --names {params.names} "
            "--logps {input.logps} --ref {input.ref} --selections {input.selections} --out {output} > {log} 2>&1"


rule tournament:
    input:
        logps=judged_files(f"{OUT}/eval/dev/logps/{{stage}}-{{name}}.parquet"),
        ref=ref_shards("dev"),
        selections=judged_files(f"{OUT}/selection/{{name}}.parquet"),
    output:
        selection=f"{OUT}/selection/{AUTO}.parquet",
        choice=f"{OUT}/eval/dev/choice.json",
    log:
        f"{OUT}/logs/tournament.log",
    localrule: True  # seconds, on log-probs already computed
    conda:
        "../../envs/prefselect.yaml"
    params:
        auto=AUTO,
        names=judged,
        config=settings("tournament", selector=AUTO),
    shell:
        "python -m prefselect tournament --config {params.config:q} --selector {params.auto} --names {params.names} "
        "--logps {input.logps} --ref {input.ref} --selections {input.selections} "
        "--out-selection {output.selection} --out-choice {output.choice} > {log} 2>&1"


if TOURNAMENT_STAGE == "final":

    rule adopt_winner:
        """The winner's final model is final-{AUTO}, linked rather than trained again."""
        input:
            choice=rules.tournament.output.choice,
            models=judged_files(f"{OUT}/models/final-{{name}}"),
        output:
            directory(f"{OUT}/models/final-{AUTO}"),
        log:
            f"{OUT}/logs/adopt_winner.log",
        localrule: True  # hard links
        conda:
            "../../envs/prefselect.yaml"
        params:
            models=lambda wildcards, input: [
                f"{c}={m}" for c, m in zip(judged(wildcards), input.models)
            ],
        shell:
            "python -m prefselect adopt-winner --choice {input.choice} --models {params.models} --out {output} > {log} 2>&1"


rule tournament_report:
    input:
        rung=rules.screen_rung.output[0] if FINALISTS else [],
        screens=expand(f"{OUT}/models/screen-{{c}}", c=CANDIDATES) if FINALISTS else [],
        benchmarks=halving_benchmarks,
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
    localrule: True
    conda:
        "../../envs/prefselect.yaml"
    params:
        config=settings("tournament-report"),
    shell:
        "python -m prefselect tournament-report --config {params.config:q} --choice {input.choice} "
        "--results {input.results} --rung {input.rung} --screens {input.screens} --benchmarks {input.benchmarks} "
        "--out-json {output.json} --out-md {output.md} --out-png {output.png} > {log} 2>&1"
