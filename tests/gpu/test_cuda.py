"""The CUDA paths: HF parity on the GPU, bf16, SDPA's flash kernel, cached and compiled generation, a bf16 training
step, and the fused LM-head loss. Marked ``gpu``: collected only where CUDA is present (see tests/conftest.py), and
run on a lent GPU with ``python -m pytest -m gpu tests/gpu``.
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from modeling_minigpt import MiniGPTConfig, MiniGPTForCausalLM, convert_from_hf

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
V = 512


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 comparisons need real fp32 matmuls, not TF32."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def llama():
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=128, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=256, vocab_size=V,
                                        max_position_embeddings=128, pad_token_id=0, eos_token_id=2))


def gpt2():
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=V, n_positions=128,
                                      pad_token_id=0, eos_token_id=2))


def batch(b=3, t=32):
    ids = torch.randint(3, V, (b, t), device=CUDA)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # left padding
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("make", [llama, gpt2], ids=["llama", "gpt2"])
def test_cuda_logits_equal_hf_fp32_and_bf16(make):
    ref = make().eval()
    ours = convert_from_hf(ref).eval()
    ref, ours = ref.to(CUDA), ours.to(CUDA)
    ids, mask = batch()
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
        torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-4, rtol=1e-4)
        ref16, ours16 = ref.to(torch.bfloat16), ours.to(torch.bfloat16)
        a, b = ours16(ids, attention_mask=mask).logits, ref16(ids, attention_mask=mask).logits
        assert a.dtype == torch.bfloat16
        # bf16 keeps 8 bits of mantissa: the two models round in different places, so compare to bf16 precision
        torch.testing.assert_close(a[mask.bool()].float(), b[mask.bool()].float(), atol=5e-2, rtol=5e-2)


def test_sdpa_flash_kernel_runs_and_equals_eager():
    """Unpadded causal self-attention in bf16 must be servable by SDPA's FlashAttention kernel (no mask tensor)."""
    config = MiniGPTConfig.from_preset("tiny-llama", vocab_size=V, max_position_embeddings=256)
    model = MiniGPTForCausalLM(config).to(CUDA, torch.bfloat16).eval()
    ids = torch.randint(3, V, (2, 128), device=CUDA)
    with torch.no_grad():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the call cannot use the flash kernel
            flash = model(ids).logits.float()
        model.config._attn_implementation = "eager"
        try:
            eager = model(ids).logits.float()
        finally:
            model.config._attn_implementation = "sdpa"
    torch.testing.assert_close(flash, eager, atol=6e-2, rtol=6e-2)


def test_cuda_generation_cache_static_and_compile():
    model = convert_from_hf(llama().eval()).to(CUDA).eval()
    ids, mask = batch(2, 12)
    kw = {"attention_mask": mask, "max_new_tokens": 16, "do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    dynamic = model.generate(ids, **kw)
    torch.testing.assert_close(model.generate(ids, use_cache=False, **kw), dynamic)
    torch.testing.assert_close(model.generate(ids, cache_implementation="static", **kw), dynamic)
    compiled = torch.compile(model.forward, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits,
                                   atol=1e-4, rtol=1e-4)


def test_bf16_autocast_training_step_learns_and_fused_loss_matches():
    torch.manual_seed(0)
    config = MiniGPTConfig.from_preset("tiny-llama", vocab_size=V, max_position_embeddings=128)
    model = MiniGPTForCausalLM(config).to(CUDA).train()
    ids = torch.randint(3, V, (4, 64), device=CUDA)
    # the fused LM-head loss (logits never materialized) equals the plain one, gradients included
    fused = model(ids, labels=ids)
    assert fused.logits is None
    fused.loss.backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain = model(ids, labels=ids, skip_logits=False)
    plain.loss.backward()
    torch.testing.assert_close(fused.loss, plain.loss, atol=1e-5, rtol=1e-5)
    for g, p in zip(fused_grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)
    model.zero_grad()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses  # memorizes the batch


def test_compiled_training_gives_the_eager_gradients():
    """Under torch.compile the LM head + loss runs unfused (see ``MiniGPTForCausalLM._fuse_loss``); the gradients
    must equal eager's (a compiled fused path once gave wrong ones on CUDA and the model did not learn)."""
    torch.manual_seed(0)
    config = MiniGPTConfig.from_preset("tiny-llama", vocab_size=V, max_position_embeddings=64)
    model = MiniGPTForCausalLM(config).to(CUDA).train()
    ids = torch.randint(0, V, (2, 32), device=CUDA)
    model(ids, labels=ids).loss.backward()
    eager = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.compile(model)(input_ids=ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], atol=1e-5, rtol=1e-4, msg=name)
