"""MiniGPT's fused LM head + cross-entropy (training with labels): the plain head's loss and gradients without the
logits, logits whenever they are asked for or the head is not a plain Linear (PEFT), and transformers'
``num_items_in_batch`` scaling for gradient accumulation, Trainer's included."""

import pytest
import torch
import torch.nn.functional as F

from modeling_minigpt import MiniGPTConfig, MiniGPTForCausalLM
from modeling_minigpt.modeling_minigpt_gpt import causal_lm_loss_fused

V = 96
HEADS = {"tied": ("tiny", {}), "untied": ("tiny-llama", dict(tie_word_embeddings=False))}


def model_for(head):
    preset, kw = HEADS[head]
    config = MiniGPTConfig.from_preset(preset, vocab_size=V, max_position_embeddings=64, pad_token_id=0, **kw)
    return MiniGPTForCausalLM(config).train()


def batch():
    """Four rows: a masked prompt, a full row, right padding, and a row with no target at all."""
    ids = torch.randint(1, V, (4, 12))
    labels = ids.clone()
    labels[0, :4] = -100
    labels[2, 9:] = -100
    labels[3] = -100
    return ids, labels


def targets(labels):
    """What a causal LM's loss averages over (and Trainer counts): the labels shifted, -100 dropped."""
    return int((labels[:, 1:] != -100).sum())


def expected_loss(logits, labels, num_items=None):
    """transformers' causal LM loss, written out: position t predicts label t + 1."""
    total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="sum")
    return total / (targets(labels) if num_items is None else num_items)


def grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def loss_and_grads(model, **kw):
    model.zero_grad()
    out = model(**kw)
    out.loss.backward()
    return out, grads(model)


def assert_same(a, b):
    """Equal losses and gradients: (output, gradients) pairs."""
    torch.testing.assert_close(a[0].loss, b[0].loss, atol=1e-5, rtol=1e-5)
    assert_same_grads(a[1], b[1])


def assert_same_grads(a, b):
    assert a.keys() == b.keys()
    for name, grad in a.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"
        torch.testing.assert_close(grad, b[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("num_items", [None, 30, torch.tensor(30)], ids=["mean", "int", "tensor"])
@pytest.mark.parametrize("head", HEADS)
def test_fused_loss_and_gradients_equal_the_plain_head(head, num_items):
    model = model_for(head)
    ids, labels = batch()
    assert targets(labels) == 27  # num_items_in_batch may count more rows than this micro-batch holds
    kw = dict(input_ids=ids, labels=labels) | ({} if num_items is None else dict(num_items_in_batch=num_items))
    fused = loss_and_grads(model, **kw)
    plain = loss_and_grads(model, skip_logits=False, **kw)
    assert fused[0].logits is None and plain[0].logits.shape == (4, 12, V)
    assert_same(fused, plain)
    torch.testing.assert_close(plain[0].loss, expected_loss(plain[0].logits, labels, num_items))


def test_chunks_and_a_frozen_head():
    """Row chunks that do not divide the rows; a frozen head (LoRA elsewhere) gets no gradient, the hidden does."""
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(V, 16)
    labels = torch.randint(0, V, (2, 9))
    labels[1, :3] = -100
    loss = causal_lm_loss_fused(hidden, weight, labels, chunk_rows=5)
    (grad,) = torch.autograd.grad(loss, hidden)
    reference = expected_loss(hidden @ weight.t(), labels)
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(grad, torch.autograd.grad(reference, hidden)[0])


def test_logits_are_returned_unless_training_with_labels():
    model = model_for("untied")
    ids, labels = batch()
    fused = model(ids, labels=labels).loss
    assert model(ids).logits.shape == (4, 12, V) and model(ids).loss is None  # training, no labels
    model.eval()
    out = model(ids, labels=labels)  # evaluation with labels: logits and the same loss
    assert out.logits.shape == (4, 12, V)
    torch.testing.assert_close(out.loss, fused, atol=1e-5, rtol=1e-5)
    asked = model(ids, labels=labels, skip_logits=True)  # an evaluation loop may skip them on request
    assert asked.logits is None
    torch.testing.assert_close(asked.loss, fused, atol=1e-5, rtol=1e-5)
    assert model(ids, skip_logits=True).logits is not None  # nothing to fuse without labels


@pytest.mark.parametrize("modules,head", [(["lm_head"], "untied"), (["q_proj", "v_proj"], "tied")],
                         ids=["lora-on-lm_head", "lora-on-attention"])
def test_peft_lora_gives_the_right_loss(modules, head):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model_for(head), LoraConfig(r=4, target_modules=modules, lora_dropout=0.0,
                                                       init_lora_weights=False))  # B != 0: the adapter counts
    model.train()
    ids, labels = batch()
    out = loss_and_grads(model, input_ids=ids, labels=labels)
    plain = loss_and_grads(model, input_ids=ids, labels=labels, skip_logits=False)
    # a LoRA head is no plain Linear: the loss runs through it, logits and all; LoRA elsewhere stays fused
    assert (out[0].logits is None) == ("lm_head" not in modules)
    assert out[1] and all("lora_" in name for name in out[1])
    assert_same(out, plain)
    torch.testing.assert_close(out[0].loss, expected_loss(plain[0].logits, labels), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_gradient_accumulation_sums_to_the_whole_batch(head):
    """Micro-batches each divided by the whole step's target count (as Trainer passes it) add up to the whole
    batch's mean, gradients included; a micro-batch with no target adds zero, not NaN."""
    model = model_for(head)
    ids, labels = batch()
    whole = loss_and_grads(model, input_ids=ids, labels=labels, skip_logits=False)
    model.zero_grad()
    total = 0.0
    for rows in (slice(0, 1), slice(1, 3), slice(3, 4)):
        loss = model(input_ids=ids[rows], labels=labels[rows], num_items_in_batch=torch.tensor(targets(labels))).loss
        loss.backward()
        total += loss.detach()
    assert loss == 0  # the last micro-batch holds no target
    torch.testing.assert_close(total, whole[0].loss, atol=1e-5, rtol=1e-5)
    assert_same_grads(grads(model), whole[1])


def test_trainer_gradient_accumulation_steps_by_the_mean_gradient(tmp_path):
    """Trainer with 2 accumulated micro-batches of 2 rows: one SGD step moves each weight by -lr x the gradient of
    the 4 rows' mean loss, so Trainer passes num_items_in_batch, counts shifted targets and the fused loss uses it."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = model_for("untied")
    ids, labels = batch()
    expected = loss_and_grads(model, input_ids=ids, labels=labels, skip_logits=False)[1]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant",
                             weight_decay=0.0, max_grad_norm=0.0, report_to=[], save_strategy="no",
                             use_cpu=True, dataloader_drop_last=False, disable_tqdm=True)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    Trainer(model=model, args=args, train_dataset=data).train()
    for name, p in model.named_parameters():
        torch.testing.assert_close(before[name] - p.detach(), expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_under_bf16_autocast_the_head_gradient_is_a_bf16_gemm_close_to_the_plain_path():
    """Under autocast (accelerate's mixed precision) every GEMM of the fused loss runs in bf16, like the plain
    path's; the in-place fp32 ``addmm_`` escaped autocast and ran in fp32 (on an H100 without TF32: slow)."""
    model = model_for("untied")
    ids, labels = batch()
    grads = {}
    for skip in (True, False):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, labels=labels, skip_logits=skip).loss
        loss.backward()
        grads[skip] = (loss.detach(), model.lm_head.weight.grad.clone())
    torch.testing.assert_close(grads[True][0], grads[False][0], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(grads[True][1], grads[False][1], atol=1e-3, rtol=5e-2)
    calls = []
    original = torch.Tensor.addmm_
    torch.Tensor.addmm_ = lambda self, *a, **k: calls.append(self.dtype) or original(self, *a, **k)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(ids, labels=labels).loss.backward()
    finally:
        torch.Tensor.addmm_ = original
    assert calls == []  # no fp32 in-place GEMM under autocast
