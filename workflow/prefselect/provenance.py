"""Provenance: the fingerprints of the models, data and settings an output was computed from.

Score shards, merged scores and selections carry a record in their parquet key-value metadata (key `prefselect`):

    {"inputs": {name: fingerprint, ...}, "config": {the settings that change the numbers}, "fingerprint": ..., ...}

`fingerprint` is a digest of `inputs` and `config` only: two shards agree when their fingerprints are equal, and a
record's other keys (which shard, how many rows) may differ. Fingerprints are content hashes, never paths or times,
so an identical rerun, or the same scores from another number of shards, gets the same fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from . import lora
from .fetch import sha256_of
from .tables import PAIR

KEY = "prefselect"
# Files in a model folder that do not define the model: TRL's log holds timings, which differ between identical runs.
NOT_MODEL_FILES = {"training_log.json"}


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    return sha256_of(Path(path))[:16]


@functools.cache
def model_fingerprint(path: str) -> str:
    """A digest of every file of a model folder (weights, config, tokenizer); a hub id stands for itself. A folder
    holding a LoRA adapter is fingerprinted together with its base model.

    Hashing reads the weights once per process (about 10 s for 16 GB), a small price next to loading them.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return f"hub:{path}"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in NOT_MODEL_FILES)
    own = [(str(p.relative_to(folder)), file_digest(p)) for p in files]
    return digest([own, base_fingerprint(path)]) if lora.is_adapter(folder) else digest(own)


def base_fingerprint(adapter: str) -> str:
    """The fingerprint of the base model of the adapter in folder `adapter`."""
    return model_fingerprint(lora.base_of(adapter))


def frame_fingerprint(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A digest of the values of `columns` (default: all), row order included."""
    columns = list(df.columns) if columns is None else columns
    return chunks_fingerprint([df], columns)


def chunks_fingerprint(chunks, columns: list[str]) -> str:
    """`frame_fingerprint` of the concatenation of `chunks` (frames), one chunk in memory at a time: rows hash
    independently of each other, so the digest does not depend on where the chunks split."""
    h = hashlib.sha256(json.dumps(columns).encode())
    for chunk in chunks:
        h.update(pd.util.hash_pandas_object(chunk[columns], index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def pairs_fingerprint(pairs: pd.DataFrame | str | Path) -> str:
    """What the method reads of a pair: its id and texts (extra columns, e.g. the demo's truth, do not count).

    A parquet path is read a slice at a time (a scoring shard need not load the whole training set), with the same
    digest as its frame."""
    if isinstance(pairs, pd.DataFrame):
        return frame_fingerprint(pairs, list(PAIR))
    batches = pq.ParquetFile(pairs).iter_batches(batch_size=1 << 16, columns=list(PAIR))
    return chunks_fingerprint((batch.to_pandas() for batch in batches), list(PAIR))


def record(inputs: dict, config: dict, **extra) -> dict:
    return {"inputs": inputs, "config": config, "fingerprint": digest([inputs, config]), **extra}


def metadata(rec: dict) -> dict[str, str]:
    """The parquet key-value metadata that carries a record (for `io.write_parquet`)."""
    return {KEY: json.dumps(rec, sort_keys=True)}


def read(path: str | Path) -> dict | None:
    """The record of a parquet file, or None where it has none (written elsewhere)."""
    raw = (pq.read_schema(path).metadata or {}).get(KEY.encode())
    return json.loads(raw) if raw else None


def fingerprint_of(path: str | Path) -> str:
    """A file's recorded fingerprint, or the digest of its bytes where it has no record."""
    rec = read(path)
    return rec["fingerprint"] if rec else f"file:{file_digest(path)}"


# The records of the steps --------------------------------------------------------------------------------------


def logps_record(model: str, pairs: pd.DataFrame | str, max_length: int, shard: int, shards: int) -> dict:
    """Log-probs of shard `shard` of `pairs` (all of them, before slicing) under `model`."""
    return record(
        {"model": model_fingerprint(model), "data": pairs_fingerprint(pairs)},
        {"max_length": max_length},
        shard=f"{shard}-of-{shards}",
    )


def reference_model(ref_path: str, data: str, max_length: int) -> str | None:
    """The fingerprint of the model behind reference log-probs, after checking they belong to the pairs whose
    fingerprint is `data`."""
    ref = read(ref_path)
    if ref is None:
        return None
    if ref["inputs"]["data"] != data or ref["config"]["max_length"] != max_length:
        raise ValueError(
            f"reference log-probs {ref_path} were computed on other pairs or another max_length (data "
            f"{ref['inputs']['data']}, max_length {ref['config']['max_length']}; now data {data}, max_length "
            f"{max_length}): rerun ref_logps"
        )
    return ref["inputs"]["model"]


def scores_record(
    warmup: str, aux: str, pairs: pd.DataFrame | str, ref_path: str, beta: float, loss_type: str, max_length: int
) -> dict:
    """A score shard: the two scored models, the pairs, the reference model and the settings of the scores."""
    data = pairs_fingerprint(pairs)
    inputs = {
        "warmup": model_fingerprint(warmup),
        "aux": model_fingerprint(aux),
        "data": data,
        "reference": reference_model(ref_path, data, max_length),
    }
    shard = (read(ref_path) or {}).get("shard")
    return record(inputs, {"beta": beta, "loss_type": loss_type, "max_length": max_length}, shard=shard)


def merged_record(paths: list[str], what: str = "score shards") -> dict | None:
    """The common record of shards that must come from the same inputs; an error naming the shards otherwise."""
    records = {path: read(path) for path in paths}
    unknown = [p for p, rec in records.items() if rec is None]
    if unknown and len(unknown) < len(paths):
        raise ValueError(f"{what} {', '.join(unknown)} carry no provenance, unlike the others: rerun them")
    if unknown:
        return None
    groups: dict[str, list[str]] = {}
    for path, rec in records.items():
        groups.setdefault(rec["fingerprint"], []).append(path)
    if len(groups) > 1:
        first = {fp: records[group[0]] for fp, group in groups.items()}
        differ = sorted(
            (part, key)
            for part in ("inputs", "config")
            for key in {k for rec in first.values() for k in rec[part]}
            if len({json.dumps(rec[part].get(key), sort_keys=True) for rec in first.values()}) > 1
        )
        lines = [
            ", ".join(group) + ": " + ", ".join(f"{part}.{key}={first[fp][part].get(key)}" for part, key in differ)
            for fp, group in groups.items()
        ]
        raise ValueError(
            f"{what} come from different models, data or settings; rerun the stale ones:\n  " + "\n  ".join(lines)
        )
    common = records[paths[0]]
    return record(common["inputs"], common["config"], shards=len(paths))


def selection_record(
    name: str, spec: dict, seed: int, scores: str, pairs: pd.DataFrame, like: str | None = None
) -> dict:
    """A selection: the scores (by their fingerprint) and pairs it selected from, its rule and its seed."""
    inputs = {
        "scores": fingerprint_of(scores),
        "data": pairs_fingerprint(pairs),
        "like": fingerprint_of(like) if like else None,
    }
    return record(inputs, {"name": name, "spec": spec, "seed": seed})


def samples_record(model: str, prompts: str, seed: int, samples: int, max_new_tokens: int) -> dict:
    """Sampled continuations: the model, the prompts, and how they were drawn."""
    return record(
        {"model": model_fingerprint(model), "prompts": file_digest(prompts)},
        {"seed": seed, "samples": samples, "max_new_tokens": max_new_tokens},
    )


def report_record(config: dict, inputs: dict[str, str]) -> dict:
    """Where a report's numbers came from: prefselect's version, the config keys its step read, and each input
    file's record (its fingerprint, and the models, data, seed and settings behind it where it carries them)."""
    from . import __version__

    files = {
        name: (read(path) if Path(path).suffix == ".parquet" else None) or {"fingerprint": f"file:{file_digest(path)}"}
        for name, path in inputs.items()
    }
    return {
        "package": __version__,
        "config": config,
        "inputs": files,
        "fingerprint": digest([config, {name: rec["fingerprint"] for name, rec in files.items()}]),
    }


def influence_record(
    model: str, pairs: pd.DataFrame, val_grad: str, ref_paths: list[str], settings: dict, shard: int, shards: int
) -> dict:
    """An influence shard: the model θ, the pairs, ḡ_val, the reference model and the settings of IF."""
    data = pairs_fingerprint(pairs)
    references = {reference_model(path, data, settings["max_length"]) for path in ref_paths}
    inputs = {
        "model": model_fingerprint(model),
        "data": data,
        "val_grad": file_digest(val_grad),
        "reference": sorted(references, key=str),
    }
    config = {k: v for k, v in settings.items() if k != "batch_size"}  # the batch changes the speed, not IF
    return record(inputs, config, shard=f"{shard}-of-{shards}")
