"""Influence (per-pair gradients, ḡ_val, projection), the agreement of the proxies with it, and the group study."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import dpo_settings, influence_settings
from torch.func import vmap

from prefselect.agreement import agreement, agreement_figure, agreement_markdown, overlap, stage_seconds, symmetric_band
from prefselect.config import ConfigError, validate
from prefselect.groups import curves_figure, group_report, groups_markdown, influence_groups
from prefselect.influence import (
    differentiable_model,
    influence,
    join_influence,
    load_val_grad,
    pair_batches,
    pair_loss_fn,
    per_pair_gradients,
    project,
    projection_kernel,
    save_val_grad,
    selected_parameters,
    validation_gradient,
)
from prefselect.logps import pair_logps
from prefselect.models import load_model, load_tokenizer
from prefselect.training import build_trainer, with_ref_logps


@pytest.fixture
def ref(tiny_lm_other, pairs):
    """Reference log-probs of another model, so that margins at θ = tiny_lm are not all zero."""
    return pair_logps(load_model(tiny_lm_other), pairs, load_tokenizer(tiny_lm_other), 64)


def all_pair_gradients(model_path, pairs, ref, settings) -> dict[str, torch.Tensor]:
    """Per-pair gradients of every pair, in the order of `pairs`."""
    model = differentiable_model(load_model(model_path))
    params = selected_parameters(model, settings.params)
    loss = pair_loss_fn(model, settings.beta, settings.loss_type)
    out = {n: torch.zeros(len(pairs), *p.shape) for n, p in params.items()}
    for index, batch in pair_batches(pairs, ref, load_tokenizer(model_path), settings, "cpu"):
        for name, g in per_pair_gradients(loss, params, batch).items():
            out[name][torch.as_tensor(index)] = g
    return out


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
def test_per_pair_gradients_equal_a_loop_of_autograd_over_trl_training_loss(tiny_lm, pairs, ref, loss_type, tmp_path):
    pairs = pairs[:8]  # TRL's loss takes ~0.2 s a call on CPU
    settings = influence_settings(loss_type=loss_type, batch_size=3)
    batched = all_pair_gradients(tiny_lm, pairs, ref, settings)
    trainer = build_trainer(tiny_lm, with_ref_logps(pairs, ref), dpo_settings(loss_type=loss_type), str(tmp_path))
    model = trainer.model.eval()
    params = dict(model.named_parameters())
    assert set(params) == set(batched)
    for i in range(len(pairs)):
        loss = trainer.compute_loss(model, trainer.data_collator([trainer.train_dataset[i]]))
        for name, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            torch.testing.assert_close(batched[name][i], g, atol=1e-6, rtol=1e-4)


def test_a_parameter_subset_is_a_restriction_and_a_pattern_must_match(tiny_lm, pairs, ref):
    model = load_model(tiny_lm)
    mlp = selected_parameters(model, ["transformer.h.*.mlp.*"])
    assert mlp and all(".mlp." in name for name in mlp)
    subset = all_pair_gradients(tiny_lm, pairs[:6], ref, influence_settings(params=["transformer.h.*.mlp.*"]))
    full = all_pair_gradients(tiny_lm, pairs[:6], ref, influence_settings())
    for name, g in subset.items():
        torch.testing.assert_close(g, full[name])
    with pytest.raises(ValueError, match="influence.params: 'lm_head.\\*' matches no parameter"):
        selected_parameters(model, ["lm_head.*"])


def mean_loss(model, params, pairs, ref, tokenizer, settings) -> float:
    loss = vmap(pair_loss_fn(model, settings.beta, settings.loss_type), in_dims=(None, 0, 0, 0))
    batches = pair_batches(pairs, ref, tokenizer, settings, "cpu")
    return float(sum(loss(params, *batch).sum() for _, batch in batches)) / len(pairs)


def test_one_sgd_step_on_a_pair_changes_the_validation_loss_by_minus_lr_times_its_influence(tiny_lm, pairs, ref):
    tokenizer = load_tokenizer(tiny_lm)
    settings = influence_settings(batch_size=8)
    model = differentiable_model(load_model(tiny_lm)).double()  # float64: the finite difference stays exact enough
    val, train = pairs[:8], pairs[8:16]
    val_grad = validation_gradient(model, val, ref, tokenizer, settings)
    scores = influence(model, train, ref, tokenizer, val_grad, settings)["influence"].to_numpy()
    params = selected_parameters(model, None)
    loss = pair_loss_fn(model, settings.beta, settings.loss_type)
    before = mean_loss(model, params, val, ref, tokenizer, settings)
    lr = 1e-4
    for i in range(len(train)):
        ((_, batch),) = pair_batches(train.iloc[[i]], ref, tokenizer, settings, "cpu")
        step = per_pair_gradients(loss, params, batch)
        after = mean_loss(model, {n: p - lr * step[n][0] for n, p in params.items()}, val, ref, tokenizer, settings)
        assert after - before == pytest.approx(-lr * scores[i], rel=0.02, abs=1e-9)
    assert np.ptp(scores) > 0


def test_projection_is_one_matrix_for_every_call_and_the_kernel_equals_projecting_both():
    torch.manual_seed(0)
    grads = {"b": torch.randn(5, 3, 4), "a": torch.randn(5, 7)}
    identity = {"a": torch.eye(19)[:, :7], "b": torch.eye(19)[:, 7:].reshape(19, 3, 4)}
    matrix = project(identity, 6, seed=3)  # rows: the entries of a (sorted first), then those of b
    flat = torch.cat([grads["a"], grads["b"].flatten(1)], 1).double()
    torch.testing.assert_close(project(grads, 6, seed=3), flat @ matrix)
    torch.testing.assert_close(project({n: g[2:3] for n, g in grads.items()}, 6, seed=3), (flat @ matrix)[2:3])
    torch.testing.assert_close(matrix.abs(), torch.full_like(matrix, 6**-0.5))
    vector = {n: g[0] for n, g in grads.items()}
    kernel = projection_kernel(vector, 6, seed=3)
    via_kernel = sum(grads[n].flatten(1).double() @ kernel[n].flatten().double() for n in grads)
    projected_vector = project({n: v[None] for n, v in vector.items()}, 6, seed=3)[0]
    torch.testing.assert_close(via_kernel, project(grads, 6, seed=3) @ projected_vector)


def test_projection_preserves_inner_products_in_expectation():
    generator = torch.Generator().manual_seed(1)
    g, h = torch.randn(2, 50, generator=generator)
    h = h + 0.5 * g  # a clearly nonzero inner product
    dim = 8
    estimates = torch.stack([project({"x": torch.stack([g, h])}, dim, seed) for seed in range(400)])
    inner = (estimates[:, 0] * estimates[:, 1]).sum(-1)
    exact = float(g @ h)
    # Rademacher: Var⟨Rg, Rh⟩ = (|g|²|h|² + ⟨g, h⟩² − 2 Σ g_i² h_i²) / dim
    variance = (float(g @ g) * float(h @ h) + exact**2 - 2 * float((g**2 * h**2).sum())) / dim
    assert abs(float(inner.mean()) - exact) < 4 * (variance / len(inner)) ** 0.5
    assert float(inner.var()) == pytest.approx(variance, rel=0.25)


def test_projected_influence_is_the_inner_product_of_projected_gradients(tiny_lm, pairs, ref):
    tokenizer = load_tokenizer(tiny_lm)
    exact = influence_settings(params=["transformer.h.0.*"])
    projected = influence_settings(params=["transformer.h.0.*"], projection_dim=16, seed=5)
    model = load_model(tiny_lm)
    val_grad = validation_gradient(model, pairs[:8], ref, tokenizer, exact)
    scores = influence(model, pairs[8:14], ref, tokenizer, val_grad, projected)["influence"].to_numpy()
    grads = all_pair_gradients(tiny_lm, pairs[8:14], ref, exact)
    expected = project(grads, 16, 5) @ project({n: v[None] for n, v in val_grad.items()}, 16, 5)[0]
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-4, atol=1e-8)


def test_val_grad_file_round_trips_and_refuses_other_loss_settings(tmp_path):
    settings = influence_settings(beta=0.1)
    val_grad = {"w": torch.arange(6.0).reshape(2, 3)}
    save_val_grad(val_grad, tmp_path / "g.safetensors", settings)
    torch.testing.assert_close(load_val_grad(str(tmp_path / "g.safetensors"), settings)["w"], val_grad["w"])
    with pytest.raises(ValueError, match="recompute it"):
        load_val_grad(str(tmp_path / "g.safetensors"), influence_settings(beta=0.2))


def test_join_influence_needs_every_scored_pair():
    scores = pd.DataFrame({"id": ["a", "b"], "lossdiff": [1.0, 2.0]})
    joined = join_influence(scores, pd.DataFrame({"id": ["b", "a"], "influence": [20.0, 10.0]}))
    assert joined["influence"].tolist() == [10.0, 20.0]
    with pytest.raises(ValueError, match="missing for 1"):
        join_influence(scores, pd.DataFrame({"id": ["a"], "influence": [1.0]}))


def test_influence_bands_need_influence_enabled():
    config = {"demo": {"enabled": True}, "selectors": {"tif": {"bands": {"influence": [10, 90]}}}}
    with pytest.raises(ConfigError, match="selectors.tif.bands.influence: needs influence.enabled: true"):
        validate(config)
    assert validate({**config, "influence": {"enabled": True}})["influence"]["shards"] == 2


# Agreement and groups on known tables ---------------------------------------------------------------------------


def test_overlap_and_symmetric_bands_on_known_sets():
    a = np.array([1, 1, 1, 1, 0, 0], bool)
    b = np.array([0, 0, 1, 1, 1, 0], bool)
    assert overlap(a, b) == pytest.approx(2 / 3)
    x = np.arange(1000.0)
    table = pd.DataFrame({"x": x, "y": x[::-1], "z": np.random.default_rng(0).random(1000)})
    lo, hi = symmetric_band(table, ["x"], 0.8)
    assert lo == pytest.approx(10, abs=0.1) and hi == pytest.approx(90, abs=0.1)
    lo, hi = symmetric_band(table, ["x", "y"], 0.6)  # y is x reversed: the same pairs, so the same band as x alone
    assert hi - lo == pytest.approx(60, abs=0.1)
    lo, hi = symmetric_band(table, ["x", "z"], 0.6)  # independent scores: each band must keep about √0.6
    assert hi - lo == pytest.approx(100 * 0.6**0.5, abs=3)


@pytest.fixture
def synthetic():
    rng = np.random.default_rng(0)
    n = 400
    lossdiff = rng.normal(size=n)
    return pd.DataFrame(
        {
            "id": [f"p{i}" for i in range(n)],
            "lossdiff": lossdiff,
            "irm": rng.normal(size=n),
            "aux_irm": rng.normal(size=n),
            "influence": lossdiff + 0.3 * rng.normal(size=n),
            "flipped": rng.random(n) < 0.3,
            "oracle_margin": rng.normal(size=n),
        }
    )


def test_agreement_report_on_a_synthetic_table(synthetic, tmp_path):
    report = agreement(synthetic, [10, 90])
    assert report["kept_fraction"] == pytest.approx(0.8, abs=0.01)
    assert report["random_overlap"] == report["kept_fraction"]
    proxies = report["proxies"]
    for p in proxies.values():
        assert p["kept_fraction"] >= report["kept_fraction"] and p["kept_fraction"] < report["kept_fraction"] + 0.01
    assert proxies["lossdiff"]["overlap_with_tif"] > 0.9  # IF is LossDiff plus noise
    assert proxies["irm"]["overlap_with_tif"] < report["random_overlap"] + 0.05  # IRM is independent of IF
    r = report["correlation_with_influence"]
    assert r["lossdiff"]["pearson"] > 0.9 and r["lossdiff"]["spearman"] > 0.9 and abs(r["irm"]["pearson"]) < 0.15
    benchmark = "s\th:m:s\tmax_rss\tcpu_time\n{}\t0:00:01\t100\t{}\n"
    for name, seconds in (("score0", 2.0), ("score1", 3.0), ("aux", 1.0), ("influence0", 20.0), ("val_grad", 4.0)):
        (tmp_path / f"{name}.tsv").write_text(benchmark.format(seconds, seconds / 2))
    report["seconds"] = stage_seconds(
        {
            "aux": [tmp_path / "aux.tsv"],
            "score": [tmp_path / "score0.tsv", tmp_path / "score1.tsv"],
            "val_grad": [tmp_path / "val_grad.tsv"],
            "influence": [tmp_path / "influence0.tsv"],
        }
    )
    assert report["seconds"]["stages"]["score"] == {"wall": 5.0, "cpu": 2.5}
    assert report["seconds"]["influence_over_proxies"] == {"wall": pytest.approx(4), "cpu": pytest.approx(4)}
    markdown = agreement_markdown(report)
    assert "| lossdiff_irm |" in markdown and "| influence (val_grad + influence) | 24.0 | 12.0 |" in markdown
    agreement_figure(synthetic, report, str(tmp_path / "agreement.png"))
    assert (tmp_path / "agreement.png").read_bytes()[:4] == b"\x89PNG"


def test_groups_are_if_terciles_with_their_ground_truth_and_curves(synthetic, tmp_path):
    selections = influence_groups(synthetic[["id", "influence"]])
    kept = np.stack([s["selected"].to_numpy() for s in selections.values()])
    assert (kept.sum(0) == 1).all() and abs(kept.sum(1) - len(synthetic) / 3).max() <= 1
    log = [{"step": s, "eval_loss": 0.7 - s / 100, "eval_rewards/margins": s / 10} for s in (0, 5, 10)]
    log.append({"loss": 0.6, "step": 10})  # a training entry, not part of the curve
    report = group_report(
        synthetic.drop(columns="influence"), selections, synthetic[["id", "influence"]], {g: log for g in selections}
    )
    assert report["small"]["influence_range"][1] < report["medium"]["influence_range"][0]
    assert report["medium"]["influence_range"][1] < report["large"]["influence_range"][0]
    truth = synthetic.set_index("id").loc[selections["large"].query("selected")["id"]]
    assert report["large"]["flipped_share"] == pytest.approx(truth["flipped"].mean())
    assert report["large"]["oracle_margin_mean"] == pytest.approx(truth["oracle_margin"].mean())
    assert [p["step"] for p in report["small"]["validation_curve"]] == [0, 5, 10]
    assert "0.7000 → 0.6000" in groups_markdown(report)
    curves_figure(report, str(tmp_path / "groups.png"))
    assert (tmp_path / "groups.png").is_file()
