"""The batch-1 decoding GEMV split over threads (minigpt_linear): same values, and only where it is safe."""

import pytest
import torch
from torch import nn

from modeling_minigpt import MiniGPTConfig, MiniGPTForCausalLM, minigpt_linear
from modeling_minigpt.minigpt_linear import gemv_parts, linear


@pytest.fixture
def threads(monkeypatch):
    """Run the test with several intra-op threads (conftest pins 1), then put the count back. The tests' small
    weights are split too (the size floor has its own test)."""
    monkeypatch.setattr(minigpt_linear, "MIN_SPLIT_WEIGHT", 0)
    before = torch.get_num_threads()

    def use(n):
        torch.set_num_threads(n)
    yield use
    torch.set_num_threads(before)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n_threads, out, parts", [(2, 96, 2), (3, 96, 3), (4, 90, 2), (3, 64, 0)])
def test_one_row_is_split_and_equals_the_module(threads, bias, n_threads, out, parts):
    threads(n_threads)
    lin = nn.Linear(48, out, bias=bias)
    x = torch.randn(1, 1, 48)
    with torch.no_grad():
        assert gemv_parts(lin, x) == parts  # the thread count, else its largest divisor of out; none for gcd 1
        torch.testing.assert_close(linear(lin, x), lin(x))  # the same dot products; at most the rounding differs


def test_a_row_keeps_its_shape(threads):
    threads(2)
    lin = nn.Linear(48, 96)
    with torch.no_grad():
        for shape in [(48,), (1, 48), (1, 1, 48)]:
            x = torch.randn(shape)
            assert gemv_parts(lin, x) == 2
            torch.testing.assert_close(linear(lin, x), lin(x))  # assert_close also compares the shapes
        assert gemv_parts(lin, torch.randn(1, 1, 1, 48)) == 0  # more dims than the split handles


def test_only_weights_from_the_size_floor_up_are_split(threads, monkeypatch):
    """A parallel region costs more than a small GEMV: below MIN_SPLIT_WEIGHT elements the module runs as is."""
    monkeypatch.undo()  # the default floor
    threads(2)
    floor = minigpt_linear.MIN_SPLIT_WEIGHT
    assert floor == 1 << 17
    row = torch.randn(1, 1, 256)
    small, large = nn.Linear(256, floor // 256 - 2), nn.Linear(256, floor // 256)
    with torch.no_grad():
        assert gemv_parts(small, row) == 0
        assert gemv_parts(large, row) == 2
        torch.testing.assert_close(linear(large, row), large(row))


def test_everything_else_calls_the_module(threads):
    threads(2)
    lin, row = nn.Linear(16, 32), torch.randn(1, 16)
    with torch.no_grad():
        assert gemv_parts(lin, row) == 2
        assert gemv_parts(lin, torch.randn(2, 16)) == 0  # several rows: the GEMM is threaded already
        assert gemv_parts(lin, row.double()) == 0
        assert gemv_parts(nn.Linear(16, 32).double(), row.double()) == 0  # measured in fp32 only
    assert gemv_parts(lin, row) == 0  # autograd records the module
    class Doubled(nn.Linear):  # as a quantized or adapter subclass would, it changes what a call computes
        def forward(self, x):
            return 2 * super().forward(x)

    doubled = Doubled(16, 32)
    with torch.no_grad():
        assert gemv_parts(doubled, row) == 0
        torch.testing.assert_close(linear(doubled, row), 2 * nn.functional.linear(row, doubled.weight, doubled.bias))
    seen = []
    lin.register_forward_hook(lambda *args: seen.append(1))
    with torch.no_grad():
        assert gemv_parts(lin, row) == 0
        linear(lin, row)
    assert seen == [1]  # hooks run
    threads(1)
    with torch.no_grad():
        assert gemv_parts(nn.Linear(16, 32), row) == 0


def test_peft_wrapped_projections_run_as_wrapped(threads):
    from peft import LoraConfig, get_peft_model

    threads(2)
    config = MiniGPTConfig.from_preset("tiny", vocab_size=96, max_position_embeddings=64)
    model = get_peft_model(MiniGPTForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    attn = model.base_model.model.model.layers[0].self_attn
    with torch.no_grad():
        attn.q_proj.lora_B["default"].weight.normal_()  # LoRA's B starts at zero: make the adapter count
        x = torch.randn(1, 1, config.hidden_size)
        assert gemv_parts(attn.q_proj, x) == 0 and gemv_parts(attn.k_proj, x) > 0
        torch.testing.assert_close(linear(attn.q_proj, x), attn.q_proj(x))
        assert not torch.allclose(linear(attn.q_proj, x), attn.q_proj.base_layer(x))


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_generation_with_the_split_matches_without(threads, monkeypatch, preset):
    threads(2)
    config = MiniGPTConfig.from_preset(preset, vocab_size=96, max_position_embeddings=64)
    model = MiniGPTForCausalLM(config).eval()
    ids = torch.randint(2, 96, (1, 7))
    kw = dict(max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
              return_dict_in_generate=True)
    calls = []
    monkeypatch.setattr(minigpt_linear, "gemv_parts", lambda m, x: calls.append(gemv_parts(m, x)) or calls[-1])
    split = model.generate(ids, **kw)
    assert sum(p > 0 for p in calls) >= 9 * (6 * config.num_hidden_layers + 1)  # every projection of the 9 steps
    monkeypatch.setattr(minigpt_linear, "gemv_parts", lambda m, x: 0)
    plain = model.generate(ids, **kw)
    assert torch.equal(split.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(split.logits), torch.stack(plain.logits))
