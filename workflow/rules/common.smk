import json
import shlex
from pathlib import Path

OUT = config["outdir"]
SELECTORS = list(config["selectors"])
SHARDS = config["scoring"]["shards"]
SFT = config["model"]["path"]


def local_model(path):
    """A model folder as a rule input, so that a rebuilt model reruns its users; a hub id is no file."""
    return [path] if config["demo"]["enabled"] or Path(path).exists() else []


def local_file(path):
    """A data file as a rule input; a hub id (no file suffix) or an unset path is none."""
    return [path] if path and Path(path).suffix else []


def input_or(name, fallback):
    """A param: the path of input `name`, or `fallback` (a hub id) where that input is empty."""
    return lambda wildcards, input: str(input[name]) or fallback


def output_folder(name):
    return lambda wildcards, output: str(Path(output[name]).parent)


def ref_shards(split):
    return expand(f"{OUT}/logps/ref/{split}/{{i}}-of-{SHARDS}.parquet", i=range(SHARDS))


def remote_code():
    return "--trust-remote-code" if config["model"]["trust_remote_code"] else ""


def dpo_flags(epochs):
    t, m = config["training"], config["method"]
    return (
        f"--beta {m['beta']} --loss-type {m['loss_type']} --epochs {epochs} --learning-rate {t['learning_rate']} "
        f"--batch-size {t['batch_size']} --max-length {config['data']['max_length']} --seed {config['seed']} "
        + remote_code()
    )


def selector_spec(name):
    return shlex.quote(json.dumps(config["selectors"][name]))


def like_selection(wildcards):
    like = config["selectors"][wildcards.selector].get("like")
    return [f"{OUT}/selection/{like}.parquet"] if like else []
