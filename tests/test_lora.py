"""LoRA (training.lora): adapters trained through TRL's PEFT support, loaded as base + adapter by every step."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    config_arg,
    dpo_settings,
    influence_settings,
    kill_at_first_checkpoint,
    made_up_run,
    make_pairs,
    one_torch_thread,
)
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from prefselect import provenance
from prefselect.cli import main
from prefselect.config import ConfigError, validate
from prefselect.influence import (
    differentiable_model,
    pair_batches,
    pair_loss_fn,
    per_pair_gradients,
    selected_parameters,
)
from prefselect.logps import pair_logps
from prefselect.lora import base_of, recorded_base, require_peft
from prefselect.models import load_model, load_tokenizer
from prefselect.training import build_trainer, run_key, train_dpo, with_ref_logps

peft = pytest.importorskip("peft", reason="peft is not installed: pip install -e '.[lora]'")

REPO = Path(__file__).resolve().parents[1]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear", "merge": False}
# Summed log-probs of ~10-token completions in float32: base + adapter and the merged weights round differently.
LOGP_TOLERANCE = 1e-4


@pytest.fixture
def ref(tiny_lm, pairs):
    return pair_logps(load_model(tiny_lm), pairs, load_tokenizer(tiny_lm), 64)


def lora_settings(**changes):
    return dpo_settings(**{"batch_size": 8, "epochs": 2, "learning_rate": 1e-2, "lora": LORA, **changes})


@pytest.fixture(scope="module")
def warmup(tiny_lm, tmp_path_factory):
    """θ as a LoRA warm-up of the tiny LM, and the folder it is in."""
    pairs = make_pairs()
    ref = pair_logps(load_model(tiny_lm), pairs, load_tokenizer(tiny_lm), 64)
    out = tmp_path_factory.mktemp("lora") / "warmup"
    train_dpo(tiny_lm, pairs, ref, str(out), lora_settings())
    return out


def logps_of(path, pairs) -> np.ndarray:
    table = pair_logps(load_model(str(path)), pairs, load_tokenizer(str(path)), 64)
    return table[["chosen_logp", "rejected_logp"]].to_numpy()


def merged(adapter, out: Path) -> Path:
    """The adapter merged into its base by peft itself, saved as a plain model: the independent computation."""
    base = load_model(base_of(adapter))
    peft.PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(out)
    load_tokenizer(str(adapter)).save_pretrained(out)
    return out


def test_a_lora_run_saves_an_adapter_that_names_its_base_and_changes_no_base_weight(tiny_lm, warmup):
    assert (warmup / "adapter_config.json").is_file() and not (warmup / "model.safetensors").exists()
    assert recorded_base(warmup) == tiny_lm
    saved = load_file(warmup / "adapter_model.safetensors")
    assert saved and all(".lora_A." in name or ".lora_B." in name for name in saved)
    # all-linear on GPT-2's Conv1D layers: attention, its projection and the MLP of every block, not the LM head
    assert {name.split(".")[-3] for name in saved} == {"c_attn", "c_proj", "c_fc"}
    loaded, base = load_model(str(warmup)), dict(load_model(tiny_lm).named_parameters())
    adapter_names = {n for n, _ in loaded.named_parameters() if ".lora_" in n}
    for name, value in loaded.named_parameters():
        if name in adapter_names:
            continue
        original = name.replace(".base_layer.", ".")
        assert torch.equal(value, base[original]), name  # every base weight bit-identical
    # B starts at zero, so a trained adapter's B is not: the adapter learned
    for name, value in saved.items():
        if ".lora_B." in name:
            assert value.abs().max() > 0, name


def test_base_plus_adapter_gives_the_log_probs_of_the_merged_model_and_not_of_the_base(
    tiny_lm, warmup, pairs, tmp_path
):
    with_adapter = logps_of(warmup, pairs)
    np.testing.assert_allclose(
        with_adapter, logps_of(merged(warmup, tmp_path / "merged"), pairs), atol=LOGP_TOLERANCE, rtol=0
    )
    assert np.abs(with_adapter - logps_of(tiny_lm, pairs)).max() > 100 * LOGP_TOLERANCE  # the adapter is not dropped


def test_scores_of_a_lora_run_come_from_its_adapters(tiny_lm, warmup, pairs, ref, tmp_path):
    """`prefselect score` on adapter folders: θ's and θ_val's log-probs are those of the merged adapters."""
    aux = tmp_path / "aux"
    train_dpo(str(warmup), pairs, ref, str(aux), lora_settings(epochs=1))
    pairs.to_parquet(tmp_path / "pairs.parquet")
    ref.to_parquet(tmp_path / "ref.parquet")
    main(
        [
            "score",
            "--warmup",
            str(warmup),
            "--aux",
            str(aux),
            "--data",
            str(tmp_path / "pairs.parquet"),
            "--ref",
            str(tmp_path / "ref.parquet"),
            "--out",
            str(tmp_path / "scores.parquet"),
            *config_arg(data={"max_length": 64}),
        ]
    )
    scores = pd.read_parquet(tmp_path / "scores.parquet").set_index("id").loc[pairs["id"]]
    for prefix, model in (("", warmup), ("aux_", aux)):
        expected = logps_of(merged(model, tmp_path / f"merged-{prefix}"), pairs)
        np.testing.assert_allclose(
            scores[[f"{prefix}chosen_logp", f"{prefix}rejected_logp"]].to_numpy(), expected, atol=LOGP_TOLERANCE, rtol=0
        )
    base = logps_of(tiny_lm, pairs)
    assert np.abs(scores[["chosen_logp", "rejected_logp"]].to_numpy() - base).max() > 100 * LOGP_TOLERANCE


def test_a_run_from_an_adapter_continues_it_and_records_the_same_base(tiny_lm, warmup, pairs, ref, tmp_path):
    trainer = build_trainer(str(warmup), with_ref_logps(pairs, ref), lora_settings(), str(tmp_path / "work"))
    assert list(trainer.model.peft_config) == ["default"]  # TRL's copy as a reference adapter is dropped
    start = load_file(warmup / "adapter_model.safetensors")
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert {n.replace(".default.", ".") for n in trainable} == set(start)  # θ's adapter, trainable, nothing else
    for name, value in trainable.items():
        assert torch.equal(value, start[name.replace(".default.", ".")]), name  # starting where θ ended
    out = tmp_path / "final"
    train_dpo(str(warmup), pairs, ref, str(out), lora_settings(epochs=1))
    assert recorded_base(out) == tiny_lm  # the final's base is θ's, the SFT model
    assert not (out / "ref").exists()
    with pytest.raises(ValueError, match="holds a LoRA adapter, but training.lora is null"):
        build_trainer(str(warmup), with_ref_logps(pairs, ref), dpo_settings(), str(tmp_path / "full"))


def test_merge_writes_a_plain_model_with_the_adapters_log_probs(warmup, pairs, ref, tmp_path):
    out = tmp_path / "final-merged"
    settings = lora_settings(epochs=1)
    train_dpo(str(warmup), pairs, ref, str(out), replace(settings, merge=True))
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert (out / "training_log.json").is_file() and (out / "tokenizer.json").is_file()
    train_dpo(str(warmup), pairs, ref, str(tmp_path / "final-adapter"), settings)
    np.testing.assert_allclose(
        logps_of(out, pairs), logps_of(tmp_path / "final-adapter", pairs), atol=LOGP_TOLERANCE, rtol=0
    )


def test_only_final_runs_merge():
    from prefselect import settings as settings_module
    from prefselect.training import DPOSettings

    config = config_arg(training={"lora": {**LORA, "merge": True}}, selectors={"full": {"kind": "full"}})[1]
    for stage, merges in (("warmup", False), ("aux", False), ("final", True)):
        s = settings_module.load(config, "train", stage)
        assert DPOSettings.of(s, stage, "full" if stage == "final" else None).merge is merges, stage


def test_an_adapter_loads_from_any_working_directory(warmup, pairs, tmp_path, monkeypatch):
    """A base recorded relative to the workflow's directory (results/models/sft) is found from elsewhere too."""
    workdir = tmp_path / "workdir"
    models = workdir / "results" / "models"
    shutil.copytree(base_of(warmup), models / "sft")
    shutil.copytree(warmup, models / "warmup")
    config = json.loads((models / "warmup" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "results/models/sft"
    (models / "warmup" / "adapter_config.json").write_text(json.dumps(config))
    expected = logps_of(warmup, pairs)
    for cwd in (workdir, tmp_path, models):
        monkeypatch.chdir(cwd)
        np.testing.assert_array_equal(logps_of(models / "warmup", pairs), expected)
    # peft's own loader reads the recorded path from the workflow's directory
    monkeypatch.chdir(workdir)
    auto = peft.AutoPeftModelForCausalLM.from_pretrained("results/models/warmup").merge_and_unload()
    loaded = pair_logps(auto, pairs, load_tokenizer("results/models/warmup"), 64)
    np.testing.assert_allclose(
        loaded[["chosen_logp", "rejected_logp"]].to_numpy(), expected, atol=LOGP_TOLERANCE, rtol=0
    )


def test_provenance_fingerprints_an_adapter_with_its_base(warmup, tiny_lm_other, tmp_path):
    before = provenance.model_fingerprint(str(warmup))
    moved = shutil.copytree(warmup, tmp_path / "rebased")
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = tiny_lm_other
    (moved / "adapter_config.json").write_text(json.dumps(config))
    assert provenance.model_fingerprint(str(moved)) != before
    assert provenance.base_fingerprint(str(warmup)) == provenance.model_fingerprint(base_of(warmup))


def test_run_keys_include_the_lora_settings(tiny_lm, pairs, ref):
    keys = [
        run_key(tiny_lm, pairs, ref, settings, None, None)
        for settings in (
            dpo_settings(),
            lora_settings(),
            lora_settings(lora={**LORA, "r": 8}),
            lora_settings(merge=True),
        )
    ]
    assert len(set(keys[:3])) == 3
    assert keys[3] == keys[1]  # merging changes how the model is written, not the run it resumes


def test_influence_of_a_lora_model_takes_the_adapters_gradients_as_trl_does(warmup, pairs, ref, tmp_path):
    """Per-pair gradients over the adapter's parameters only, equal to autograd of TRL's training loss over the
    parameters the LoRA run trains."""
    pairs = pairs[:6]
    settings = influence_settings(batch_size=3)
    model = differentiable_model(load_model(str(warmup)))
    params = selected_parameters(model, None)
    assert params and all(".lora_A." in n or ".lora_B." in n for n in params)
    loss = pair_loss_fn(model, settings.beta, settings.loss_type)
    batched = {n: torch.zeros(len(pairs), *p.shape) for n, p in params.items()}
    for index, batch in pair_batches(pairs, ref, load_tokenizer(str(warmup)), settings, "cpu"):
        for name, g in per_pair_gradients(loss, params, batch).items():
            batched[name][torch.as_tensor(index)] = g
    trainer = build_trainer(str(warmup), with_ref_logps(pairs, ref), lora_settings(), str(tmp_path))
    peft_model = trainer.model.eval()
    trained = {n.removeprefix("base_model.model."): p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert set(trained) == set(params)
    for i in range(len(pairs)):
        pair_loss = trainer.compute_loss(peft_model, trainer.data_collator([trainer.train_dataset[i]]))
        for name, g in zip(trained, torch.autograd.grad(pair_loss, list(trained.values()))):
            torch.testing.assert_close(batched[name][i], g, atol=1e-6, rtol=1e-4)


def tiny_llama(folder: Path, tokenizer_from: str) -> str:
    """A randomly initialised ~20k-parameter Llama (SmolLM2's architecture) with the tiny LM's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            tie_word_embeddings=True,
        )
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_a_llama_trains_an_adapter_on_every_linear_layer_and_loads_it(tiny_lm, pairs, tmp_path):
    llama = tiny_llama(tmp_path / "llama", tiny_lm)
    ref = pair_logps(load_model(llama), pairs, load_tokenizer(llama), 64)
    train_dpo(llama, pairs, ref, str(tmp_path / "adapter"), lora_settings())
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert {name.split(".")[-3] for name in saved} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    with_adapter = logps_of(tmp_path / "adapter", pairs)
    np.testing.assert_allclose(
        with_adapter, logps_of(merged(tmp_path / "adapter", tmp_path / "merged"), pairs), atol=LOGP_TOLERANCE, rtol=0
    )
    assert np.abs(with_adapter - ref[["chosen_logp", "rejected_logp"]].to_numpy()).max() > 100 * LOGP_TOLERANCE


def test_a_killed_lora_run_resumes_from_its_last_checkpoint_and_ends_as_an_uninterrupted_one(tiny_lm, tmp_path):
    """As tests/test_training.py's resume test, with an adapter (and its dropout, whose random state resumes too)."""
    pairs, ref = made_up_run(48, tmp_path)
    spec = {**LORA, "dropout": 0.1}
    steps = 2 * 48 // 2
    with one_torch_thread():  # as the command below
        train_dpo(
            tiny_lm,
            pairs,
            ref,
            str(tmp_path / "uninterrupted"),
            dpo_settings(batch_size=2, epochs=2, max_length=48, learning_rate=1e-2, lora=spec),
        )

    out, checkpoints = tmp_path / "models" / "warmup", tmp_path / "checkpoints" / "warmup"
    command = [
        sys.executable,
        "-m",
        "prefselect",
        "--threads",
        "1",
        "train",
        "--model",
        tiny_lm,
        "--data",
        str(tmp_path / "pairs.parquet"),
        "--ref",
        str(tmp_path / "ref.parquet"),
        *config_arg(
            training={"batch_size": 2, "warmup_epochs": 2, "save_steps": 5, "learning_rate": 1e-2, "lora": spec},
            data={"max_length": 48},
        ),
        "--checkpoint-dir",
        str(checkpoints),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    kill_at_first_checkpoint(command, env, checkpoints)
    (last,) = checkpoints.glob("run-*/checkpoint-*")
    done = int(last.name.split("-")[1])
    assert 0 < done < steps
    assert (last / "adapter_model.safetensors").is_file()  # a checkpoint holds the adapter, not the base weights
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resuming from {last} (step {done})" in rerun.stdout
    assert sum(line.startswith("{'loss'") for line in rerun.stdout.splitlines()) == steps - done
    resumed = load_file(out / "adapter_model.safetensors")
    uninterrupted = load_file(tmp_path / "uninterrupted" / "adapter_model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name  # bit for bit
    assert not checkpoints.exists()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("r", 0, "config key training.lora.r: 0 is less than the minimum of 1"),
        ("alpha", 0, "config key training.lora.alpha: 0 is less than or equal to the minimum of 0"),
        ("dropout", 1, "config key training.lora.dropout: 1 is greater than or equal to the maximum of 1"),
        ("target_modules", 5, "config key training.lora.target_modules: 5 is not valid"),
        ("target_modules", [], "config key training.lora.target_modules"),
        ("rank", 8, "config key training.lora: Additional properties are not allowed"),
    ],
)
def test_bad_lora_settings_are_errors_that_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate({"demo": {"enabled": True}, "training": {"lora": {key: value}}})


def test_lora_defaults_and_null():
    assert validate({"demo": {"enabled": True}})["training"]["lora"] is None
    lora = validate({"demo": {"enabled": True}, "training": {"lora": {}}})["training"]["lora"]
    assert lora == {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear", "merge": False}
    assert validate({"demo": {"enabled": True}, "training": {"lora": {"target_modules": ["c_attn"]}}})


def test_without_peft_lora_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # what an environment without peft imports
    with pytest.raises(ImportError, match=r"training.lora .* needs peft: pip install 'prefselect\[lora\]'"):
        require_peft()


def test_a_lora_final_continues_its_screen_run_bit_for_bit(warmup, pairs, ref, tmp_path):
    """Successive halving with LoRA: a screen run of θ's adapter, stopped half-way, and its final run continued from
    it end with the adapter of an uninterrupted final run, bit for bit; only the final run merges."""
    settings = lora_settings(save_steps=0)
    train_dpo(str(warmup), pairs, ref, str(tmp_path / "uninterrupted"), settings)
    train_dpo(str(warmup), pairs, ref, str(tmp_path / "screen"), replace(settings, stop_epochs=1.0))
    assert (tmp_path / "screen/adapter_config.json").is_file() and (tmp_path / "screen/resume").is_dir()
    train_dpo(str(warmup), pairs, ref, str(tmp_path / "final"), settings, continue_from=str(tmp_path / "screen"))
    continued = load_file(tmp_path / "final/adapter_model.safetensors")
    for name, value in load_file(tmp_path / "uninterrupted/adapter_model.safetensors").items():
        assert torch.equal(continued[name], value), name
