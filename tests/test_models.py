"""A bad model stops a step with an error that names its path; weights load from safetensors only, never unpickled.

(Conversational data with a tokenizer that has no chat template: tests/test_data.py.)
"""

import json
import pathlib
import shutil

import pytest
import torch
from conftest import make_pairs
from transformers import AutoModelForSequenceClassification, BertConfig, BertForMaskedLM

from prefselect.cli import main
from prefselect.models import load_model, load_tokenizer


def cli_error(capsys, tmp_path, model: str) -> str:
    """The error line of `prefselect logps` on `model` (the first step that loads the SFT model's weights)."""
    data = tmp_path / "pairs.parquet"
    make_pairs(4).to_parquet(data)
    with pytest.raises(SystemExit) as stopped:
        main(["logps", "--model", model, "--data", str(data), "--out", str(tmp_path / "logps.parquet")])
    assert stopped.value.code == 1
    assert not (tmp_path / "logps.parquet").exists()
    return capsys.readouterr().err


def test_a_path_that_does_not_exist(tmp_path, capsys):
    missing = str(tmp_path / "models" / "sft")
    assert f"model path {missing!r} does not exist" in cli_error(capsys, tmp_path, missing)


def test_a_folder_with_a_tokenizer_only(tmp_path, tiny_lm, capsys):
    folder = tmp_path / "tokenizer"
    load_tokenizer(tiny_lm).save_pretrained(folder)
    assert f"{str(folder)!r} is not a model folder: it has no config.json" in cli_error(capsys, tmp_path, str(folder))


def test_a_bert_folder_is_not_a_causal_lm(tmp_path, capsys):
    # transformers would load it as a BertLMHeadModel, with an LM head it initialises at random.
    folder = tmp_path / "bert"
    config = BertConfig(
        vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertForMaskedLM(config).save_pretrained(folder)
    error = cli_error(capsys, tmp_path, str(folder))
    assert f"{str(folder)!r} holds a BertForMaskedLM, not a causal language model" in error


def test_a_reward_model_is_not_a_causal_lm_nor_a_causal_lm_a_reward_model(tmp_path, tiny_lm, reward_model):
    # A GPT-2 reward model would load as a causal LM without a single missing weight (the LM head is tied).
    with pytest.raises(ValueError, match=f"'{reward_model}' holds a GPT2ForSequenceClassification, not a causal"):
        load_model(reward_model)
    with pytest.raises(ValueError, match=f"'{tiny_lm}' holds a GPT2LMHeadModel, not a sequence-classification"):
        load_model(tiny_lm, auto_class=AutoModelForSequenceClassification)
    # Without `architectures` in its config, the weights tell: the reward head is missing.
    folder = shutil.copytree(tiny_lm, tmp_path / "no-architectures")
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"lack 1 parameters of GPT2ForSequenceClassification, e.g. \['score.weight'\]"
    ):
        load_model(str(folder), auto_class=AutoModelForSequenceClassification)


class RunsOnUnpickling:
    """A pickle that creates a file when it is loaded: what a malicious pytorch_model.bin can do."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_pickled_weights_are_refused_and_never_unpickled(tmp_path, tiny_lm, capsys):
    folder = shutil.copytree(tiny_lm, tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    torch.save({"transformer.wte.weight": RunsOnUnpickling(marker)}, folder / "pytorch_model.bin")
    error = cli_error(capsys, tmp_path, str(folder))
    assert f"cannot load a model (AutoModelForCausalLM) from {str(folder)!r}" in error
    assert "weights are read from safetensors only" in error
    assert not marker.exists()


def test_remote_code_is_not_run_unless_allowed(tmp_path, capsys):
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "configuration_custom.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "custom",
                "architectures": ["CustomForCausalLM"],
                "auto_map": {
                    "AutoConfig": "configuration_custom.CustomConfig",
                    "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
                },
            }
        )
    )
    error = cli_error(capsys, tmp_path, str(folder))
    assert f"cannot read a model config from {str(folder)!r}" in error and "trust_remote_code" in error
    assert not marker.exists()
