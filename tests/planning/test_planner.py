"""`minigpt plan`: the Chinchilla allocations, the loss, the inverses, the CLI, and the FLOP/parameter counters
checked against hand counts and against real minigpt models."""

import json

import pytest

import minigpt_cli
from modeling_minigpt import MiniBertConfig, MiniGPTConfig, MiniGPTForCausalLM, MiniT5Config
from modeling_minigpt.planning import FITS, count_params, flops_per_token, gpu_flops, plan, suggest_config

GOPHER_FLOPS = 5.76e23


def close(value, target, rel):
    return abs(value / target - 1) <= rel


@pytest.mark.parametrize("fit, params, tokens", [
    ("chinchilla", 70e9, 1.4e12),  # the paper's own allocation
    ("epoch", 72e9, 1.33e12),      # Besiroglu et al. 2024
    ("approach3", 32e9, None),     # rounded Approach-3 constants
])
def test_allocations_at_the_gopher_budget(fit, params, tokens):
    result = plan(flops=GOPHER_FLOPS, fit=fit)
    assert result["fit"] == fit
    assert close(result["params"], params, 0.05)
    if tokens is not None:
        assert close(result["tokens"], tokens, 0.05)
    assert close(6 * result["params"] * result["tokens"], GOPHER_FLOPS, 1e-9)


def test_default_fit_is_chinchilla_about_20_tokens_per_param():
    result = plan(flops=1e21)
    assert result["fit"] == "chinchilla" and 19 < result["tokens_per_param"] < 21


def test_predicted_loss_is_the_epoch_refit_and_falls_with_compute():
    result = plan(flops=GOPHER_FLOPS, fit="approach3")
    n, d = result["params"], result["tokens"]
    assert result["predicted_loss"] == pytest.approx(1.8172 + 482.01 / n ** 0.3478 + 2085.43 / d ** 0.3658)
    losses = [plan(flops=c)["predicted_loss"] for c in (1e18, 1e20, 1e22, 1e24)]
    assert losses == sorted(losses, reverse=True) and losses[-1] > 1.8172


@pytest.mark.parametrize("fit", list(FITS))
def test_params_and_tokens_round_trip(fit):
    from_params = plan(params=124e6, fit=fit)
    from_tokens = plan(tokens=from_params["tokens"], fit=fit)
    from_flops = plan(flops=from_params["flops"], fit=fit)
    for other in (from_tokens, from_flops):
        assert close(other["params"], 124e6, 1e-9) and close(other["tokens"], from_params["tokens"], 1e-9)


def test_gpu_hours_convert_through_peak_and_mfu():
    assert gpu_flops(1000, "H100", mfu=0.4) == pytest.approx(1000 * 3600 * 989e12 * 0.4)
    assert gpu_flops(10, "t4", mfu=0.5) == pytest.approx(10 * 3600 * 65e12 * 0.5)
    with pytest.raises(ValueError, match="gpu='k80'"):
        gpu_flops(1, "k80")


@pytest.mark.parametrize("target", [20e6, 124e6, 1.3e9, 70e9])  # below ~20M, 64-wide steps are coarse
def test_suggested_config_hits_the_size_with_a_sane_shape(target):
    config = suggest_config(target, vocab_size=32000, seq_len=1024)
    assert close(count_params(config), target, 0.03)
    head_dim = 64 if config["hidden_size"] < 2048 else 128  # GPT-2's heads when small, Chinchilla's when large
    assert config["hidden_size"] == head_dim * config["num_attention_heads"]
    assert config["intermediate_size"] == 4 * config["hidden_size"]
    assert 64 <= config["hidden_size"] / config["num_hidden_layers"] <= 128
    assert count_params(MiniGPTConfig(**{k: v for k, v in config.items() if k != "model_type"})) == count_params(config)


def test_suggested_config_below_the_smallest_shape_is_the_smallest():
    config = suggest_config(1e5, vocab_size=32000, seq_len=1024)
    assert (config["num_hidden_layers"], config["hidden_size"]) == (1, 64)


def test_gpt2_small_counts_by_hand():
    config = MiniGPTConfig()  # GPT-2 small: 12 x 768, vocab 50257, 1024 positions, tied
    assert count_params(config) == 124_439_808  # the published GPT-2 small count
    d, L, T, V = 768, 12, 1024, 50257
    matmuls = L * (4 * d * d + 2 * d * 4 * d) + V * d  # q k v o, up down, LM head
    assert flops_per_token(config) == 6 * matmuls + 12 * L * T * d
    # nanoGPT's estimate_mfu: 6 x (params without position embeddings) + 12 L H Q T, within the bias/norm terms
    assert close(flops_per_token(config), 6 * (124_439_808 - T * d) + 12 * L * 12 * 64 * T, 0.002)
    assert flops_per_token(config, seq_len=2048) - flops_per_token(config) == 12 * L * 1024 * d


def test_gqa_gated_and_encoder_decoder_flops_by_hand():
    llama = MiniGPTConfig.from_preset("tiny-llama")  # d 128, 4 layers, 4 heads of 32, 2 kv heads, I 352, gated
    d, hd, L, T, V, inter = 128, 32, 4, 256, 4096, 352
    attention = 2 * d * 4 * hd + 2 * d * 2 * hd
    assert flops_per_token(llama) == 6 * (L * (attention + 3 * d * inter) + V * d) + 12 * L * T * 4 * hd
    t5 = MiniT5Config(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_decoder_layers=3,
                      num_attention_heads=2, head_dim=32, intermediate_size=128)
    attention, mlp = 4 * 64 * 64, 2 * 64 * 128
    expected = 6 * (2 * (attention + mlp) + 3 * (2 * attention + mlp) + 1000 * 64) + 12 * (2 + 2 * 3) * 100 * 64
    assert flops_per_token(t5, seq_len=100) == expected


def test_count_params_matches_real_models():
    from modeling_minigpt.modeling_minigpt_bert import MiniBertModel
    from modeling_minigpt.modeling_minigpt_t5 import MiniT5ForConditionalGeneration

    small = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    cases = [
        (MiniGPTForCausalLM, MiniGPTConfig.from_preset("tiny")),
        (MiniGPTForCausalLM, MiniGPTConfig.from_preset("tiny-llama", tie_word_embeddings=False)),
        (MiniGPTForCausalLM, MiniGPTConfig(**small, norm_position="post", position_embedding_type="sinusoidal")),
        (lambda c: MiniBertModel(c, add_pooling_layer=False), MiniBertConfig(**small, max_position_embeddings=64)),
        (lambda c: MiniBertModel(c, add_pooling_layer=False),
         MiniBertConfig(**small, max_position_embeddings=64, norm_position="pre", norm_type="rmsnorm")),
        (MiniT5ForConditionalGeneration, MiniT5Config(**small, num_decoder_layers=3, head_dim=32)),
        (MiniT5ForConditionalGeneration, MiniT5Config(**{**small, "num_attention_heads": 4}, num_key_value_heads=2,
                                                      head_dim=16, mlp_gated=True, tie_word_embeddings=False)),
    ]
    for build, config in cases:
        model = build(config)
        assert count_params(config) == sum(p.numel() for p in model.parameters()), config.model_type
    gpt = MiniGPTConfig.from_preset("tiny")
    assert count_params(gpt, embeddings=False) == count_params(gpt) - (4096 + 256) * 128


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        plan(flops=1e20, params=1e9)
    with pytest.raises(ValueError, match="exactly one"):
        plan()
    with pytest.raises(ValueError, match="fit='kaplan'"):
        plan(flops=1e20, fit="kaplan")
    with pytest.raises(ValueError, match="params=-1"):
        plan(params=-1)


@pytest.mark.parametrize("args, needle", [
    (["--gpu-hours", "100"], "--gpu-hours and --gpu go together"),
    (["--flops", "1e20", "--gpu", "h100"], "--gpu-hours and --gpu go together"),
    (["--gpu-hours", "100", "--gpu", "k80"], "gpu='k80' is unknown"),
    (["--gpu-hours", "100", "--gpu", "h100", "--mfu", "1.5"], "mfu=1.5"),
    (["--params=-5"], "must be a positive"),
    (["--params", "big"], "is not a number"),
    (["--flops", "1e20", "--params", "1B"], "not allowed with"),
    ([], "one of the arguments"),
    (["--flops", "1e20", "--fit", "kaplan"], "invalid choice"),
])
def test_cli_bad_flags_are_one_clear_error(capsys, args, needle):
    try:
        code = minigpt_cli.main(["plan", *args])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    assert needle in capsys.readouterr().err


def test_cli_text_names_the_fit_and_accepts_suffixes(capsys):
    assert minigpt_cli.main(["plan", "--params", "70B"]) == 0
    out = capsys.readouterr().out
    assert "fit: chinchilla" in out and "tokens: 1.37T" in out and "suggested config: num_hidden_layers=" in out
    assert minigpt_cli.main(["plan", "--gpu-hours", "1000", "--gpu", "H100", "--fit", "epoch"]) == 0
    out = capsys.readouterr().out
    assert "fit: epoch" in out and "989 TFLOP/s" in out and "flops: 1.42e+21" in out


def test_cli_json(capsys):
    assert minigpt_cli.main(["plan", "--flops", "5.76e23", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"params", "tokens", "flops", "fit", "predicted_loss", "config"} <= data.keys()
    assert data["fit"] == "chinchilla" and close(data["params"], 70e9, 0.05) and close(data["tokens"], 1.4e12, 0.05)
    assert {"num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"} <= data["config"].keys()


def test_cli_says_when_no_shape_comes_near_the_size(capsys):
    assert minigpt_cli.main(["plan", "--params", "10"]) == 0
    assert "no GPT-2-style shape" in capsys.readouterr().err
    assert minigpt_cli.main(["plan", "--params", "124M"]) == 0
    assert capsys.readouterr().err == ""
