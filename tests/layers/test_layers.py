"""The shared block library: causality, backends, GQA, positions, norms, validation."""

import pytest
import torch
from torch import nn
from transformers import AutoConfig

from modeling_minigpt import MiniGPTConfig
from modeling_minigpt.minigpt_layers import (
    MLP,
    Attention,
    RMSNorm,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    TransformerLayer,
    apply_rotary,
    build_positions,
    repeat_kv,
)


def cfg(**kw):
    base = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32)
    return MiniGPTConfig(**{**base, **kw})


def run_attn(attn, x, impl, **kw):
    attn.config._attn_implementation = impl
    return attn(x, **kw)[0]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_causal_attention_never_sees_the_future(impl):
    attn = Attention(cfg(), 0, is_causal=True).eval()
    x = torch.randn(1, 8, 32)
    y = x.clone()
    y[:, 5:] += torch.randn(1, 3, 32)
    a, b = run_attn(attn, x, impl), run_attn(attn, y, impl)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_bidirectional_attention_sees_later_tokens(impl):
    attn = Attention(cfg(), 0, is_causal=False).eval()
    x = torch.randn(1, 8, 32)
    y = x.clone()
    y[:, -1] += 1.0
    assert not torch.allclose(run_attn(attn, x, impl)[:, 0], run_attn(attn, y, impl)[:, 0])


@pytest.mark.parametrize("causal", [True, False])
def test_eager_equals_sdpa(causal):
    attn = Attention(cfg(num_key_value_heads=2), 0, is_causal=causal).eval()
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(run_attn(attn, x, "eager"), run_attn(attn, x, "sdpa"), atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_with_repeated_heads():
    gqa = Attention(cfg(num_key_value_heads=2), 0, is_causal=True).eval()
    mha = Attention(cfg(), 0, is_causal=True).eval()
    hd, rep = 8, 2
    with torch.no_grad():
        mha.q_proj.load_state_dict(gqa.q_proj.state_dict())
        mha.o_proj.load_state_dict(gqa.o_proj.state_dict())
        for name in ("k_proj", "v_proj"):  # (nkv*hd, D) -> (nkv*rep*hd, D): each kv head repeated for its group
            w = getattr(gqa, name).weight.view(2, hd, 32)
            getattr(mha, name).weight.copy_(w.repeat_interleave(rep, dim=0).reshape(4 * hd, 32))
            getattr(mha, name).bias.copy_(getattr(gqa, name).bias.view(2, hd).repeat_interleave(rep, 0).flatten())
    x = torch.randn(2, 6, 32)
    for impl in ("eager", "sdpa"):
        torch.testing.assert_close(run_attn(gqa, x, impl), run_attn(mha, x, impl), atol=1e-5, rtol=1e-5)


def test_repeat_kv_layout():
    kv = torch.arange(2 * 3).float().view(1, 2, 3, 1)
    out = repeat_kv(kv, 2)
    assert out.shape == (1, 4, 3, 1)
    torch.testing.assert_close(out[0, 1], kv[0, 0])
    torch.testing.assert_close(out[0, 2], kv[0, 1])


def test_rope_is_relative():
    """q.k after RoPE depends only on the distance between positions."""
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq, pk):
        _, (cos_q, sin_q) = rope(q, torch.tensor([[pq]]))
        _, (cos_k, sin_k) = rope(q, torch.tensor([[pk]]))
        qr, _ = apply_rotary(q, q, cos_q, sin_q)
        kr, _ = apply_rotary(k, k, cos_k, sin_k)
        return (qr * kr).sum()

    torch.testing.assert_close(score(3, 1), score(10, 8))
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_sinusoidal_matches_the_paper_formula():
    pe = SinusoidalPositionalEmbedding(8)
    out, rotary = pe(torch.zeros(1, 3, 8), torch.arange(3)[None])
    assert rotary is None
    pos, i = 2, 1
    torch.testing.assert_close(out[0, pos, i], torch.tensor(pos / 10000 ** (2 * i / 8)).sin())


def test_learned_positions_reject_positions_beyond_the_table():
    positions = build_positions(cfg(max_position_embeddings=4))
    with pytest.raises(ValueError, match="max_position_embeddings=4"):
        positions(torch.zeros(1, 5, 32), torch.arange(5)[None])


def test_rmsnorm_matches_definition():
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_()
    x = torch.randn(3, 16)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), ref)
    torch.testing.assert_close(norm(x.bfloat16()).float(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu", "silu"])
@pytest.mark.parametrize("gated", [False, True])
def test_mlp_variants(act, gated):
    mlp = MLP(cfg(hidden_act=act, mlp_gated=gated, intermediate_size=48))
    assert (mlp.gate_proj is not None) == gated
    x = torch.randn(2, 3, 32)
    fn = {"gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"), "relu": nn.ReLU(), "silu": nn.SiLU()}[act]
    h = fn(mlp.gate_proj(x)) * mlp.up_proj(x) if gated else fn(mlp.up_proj(x))
    torch.testing.assert_close(mlp(x), mlp.down_proj(h))


def test_pre_and_post_norm_residuals():
    x = torch.randn(1, 4, 32)
    for position in ("pre", "post"):
        layer = TransformerLayer(cfg(norm_position=position), 0, is_causal=True).eval()
        layer.self_attn.config._attn_implementation = "sdpa"
        attn = lambda h: layer.self_attn(h)[0]  # noqa: E731, B023 (used within this iteration)
        if position == "pre":
            h = x + attn(layer.attn_norm(x))
            ref = h + layer.mlp(layer.mlp_norm(h))
        else:
            h = layer.attn_norm(x + attn(x))
            ref = layer.mlp_norm(h + layer.mlp(h))
        torch.testing.assert_close(layer(x), ref)


@pytest.mark.parametrize("field,value,match", [
    ("hidden_size", 30, "hidden_size=30 is not divisible by num_attention_heads=4"),
    ("num_key_value_heads", 3, "num_key_value_heads=3 must divide num_attention_heads=4"),
    ("hidden_act", "tanhh", "hidden_act='tanhh'"),
    ("norm_type", "batchnorm", "norm_type='batchnorm'"),
    ("position_embedding_type", "alibi", "position_embedding_type='alibi'"),
    ("norm_position", "middle", "norm_position='middle'"),
    ("num_hidden_layers", 0, "num_hidden_layers=0"),
    ("hidden_dropout", 1.5, "hidden_dropout=1.5"),
    ("norm_eps", -1.0, "norm_eps=-1.0 must be a number > 0"),
    ("attention_bias", "false", "attention_bias=.false. must be true or false"),
    ("rope_theta", 0, "rope_theta=0 must be a number > 0"),
    ("attention_dropout", None, "attention_dropout=None must be in"),
])
def test_config_rejects_what_cannot_work(field, value, match):
    with pytest.raises(ValueError, match=match):
        cfg(**{field: value})


def test_from_pretrained_overrides_are_checked_too(tmp_path):
    # transformers applies from_pretrained(..., field=value) after the config's __post_init__
    MiniGPTConfig(**cfg().to_dict()).save_pretrained(tmp_path)
    assert MiniGPTConfig.from_pretrained(tmp_path, hidden_dropout=0.1).hidden_dropout == 0.1
    with pytest.raises(ValueError, match="hidden_act='bogus'"):
        MiniGPTConfig.from_pretrained(tmp_path, hidden_act="bogus")
    with pytest.raises(ValueError, match="hidden_dropout=2.0"):
        AutoConfig.from_pretrained(tmp_path, hidden_dropout=2.0)
