"""MiniGPT as a first-class transformers model: generation modes, caches, padding, compile, heads, bad input."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LogitsProcessor,
    LogitsProcessorList,
    StaticCache,
)

from modeling_minigpt import MINIGPT_PRESETS, MiniGPTConfig, MiniGPTForCausalLM, MiniGPTForSequenceClassification

PRESETS = ["tiny", "tiny-llama"]


def tiny(preset="tiny", **kw):
    base = dict(vocab_size=96, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    return MiniGPTForCausalLM(MiniGPTConfig.from_preset(preset, **{**base, **kw})).eval()


def prompt(batch=1, length=6):
    return torch.randint(2, 96, (batch, length))


@pytest.mark.parametrize("preset", PRESETS)
def test_cache_equals_no_cache(preset):
    model = tiny(preset)
    ids = prompt(2)
    kw = dict(max_new_tokens=12, do_sample=False, eos_token_id=None)
    torch.testing.assert_close(model.generate(ids, use_cache=True, **kw), model.generate(ids, use_cache=False, **kw))
    # and the cached logits of a step equal the full forward's
    full = model(torch.cat([ids, ids], 1)).logits[:, -1]
    out = model(ids, use_cache=True)
    step = model(ids, past_key_values=out.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_left_padded_batch_continues_each_row_as_alone(preset):
    model = tiny(preset)
    rows = [prompt(1, 4)[0], prompt(1, 9)[0]]
    width = max(len(r) for r in rows)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    batched = model.generate(ids, attention_mask=mask, **kw)[:, width:]
    for i, r in enumerate(rows):
        alone = model.generate(r[None], **kw)[:, len(r):]
        torch.testing.assert_close(batched[i:i + 1], alone)


def test_static_cache_and_compile_match_dynamic():
    model = tiny("tiny-llama")
    ids = prompt(1)
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=None)
    dynamic = model.generate(ids, **kw)
    torch.testing.assert_close(model.generate(ids, cache_implementation="static", **kw), dynamic)
    compiled = torch.compile(model.forward, dynamic=True, fullgraph=True)  # fullgraph: no graph break anywhere
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    cache = StaticCache(config=model.config, max_cache_len=32)
    out = model(ids, past_key_values=cache, use_cache=True)
    torch.testing.assert_close(out.logits, model(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_compiled_static_cache_decoding_has_no_graph_break_and_gives_the_eager_tokens(preset, monkeypatch):
    """generate() with a static cache and a compile config compiles the decoding step, on CPU too. At batch 1
    with 2 threads every projection takes minigpt_linear's split GEMV, which must trace without a graph break."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    from modeling_minigpt import minigpt_linear

    monkeypatch.setattr(minigpt_linear, "MIN_SPLIT_WEIGHT", 0)  # split this small model's weights too

    model = tiny(preset, hidden_size=64, intermediate_size=128)
    ids = prompt(1)
    kw = dict(max_new_tokens=6, do_sample=False, eos_token_id=None)
    compile_config = CompileConfig(fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True  # transformers compiles generate() on CUDA only unless told
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch._dynamo.reset()
        counters.clear()
        eager = model.generate(ids, **kw)
        compiled = model.generate(ids, cache_implementation="static", compile_config=compile_config, **kw)
    finally:
        torch.set_num_threads(threads)
    assert counters["stats"]["unique_graphs"] >= 1  # the decoding step did compile
    assert not counters["graph_break"]
    torch.testing.assert_close(compiled, eager)


def test_flex_attention_gives_the_sdpa_logits_and_tokens(flex_calls):
    """The registry's flex_attention backend (compiled by transformers; on CPU inference only, as torch's CPU flex
    has no backward): a left-padded batch gives sdpa's logits, and generate() sdpa's tokens. (Decoding a padded
    batch with flex on CPU fails in inductor's C++ compile with torch 2.13, for HF's Llama as for us.)"""
    model = tiny("tiny-llama")  # RoPE, GQA
    ids = prompt(2, 9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    kw = dict(max_new_tokens=5, do_sample=False, eos_token_id=None)
    with torch.no_grad():
        sdpa, sdpa_tokens = model(ids, attention_mask=mask).logits, model.generate(ids[:1], **kw)
        model.set_attn_implementation("flex_attention")
        flex, flex_tokens = model(ids, attention_mask=mask).logits, model.generate(ids[:1], **kw)
    assert len(flex_calls) >= 5 * model.config.num_hidden_layers  # the forward and every generate() step
    real = mask.bool()
    torch.testing.assert_close(flex[real], sdpa[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(flex_tokens, sdpa_tokens)


def test_sampling_modes_are_seeded_and_constrained():
    model = tiny()
    ids = prompt(1)

    def sample(seed, **kw):
        torch.manual_seed(seed)
        return model.generate(ids, do_sample=True, max_new_tokens=10, eos_token_id=None, **kw)

    assert torch.equal(sample(0, temperature=0.7, top_k=5, top_p=0.9), sample(0, temperature=0.7, top_k=5, top_p=0.9))
    # top_k=1 is greedy whatever the temperature
    greedy = model.generate(ids, do_sample=False, max_new_tokens=10, eos_token_id=None)
    assert torch.equal(sample(1, top_k=1, temperature=5.0), greedy)
    # a tiny top_p keeps only the most likely token too
    assert torch.equal(sample(2, top_p=1e-6), greedy)


def test_beam_search_and_repetition_penalty():
    model = tiny()
    ids = prompt(2)
    beams = model.generate(ids, num_beams=3, num_return_sequences=3, max_new_tokens=6, do_sample=False,
                           eos_token_id=None, output_scores=True, return_dict_in_generate=True)
    assert beams.sequences.shape == (6, 12)
    assert torch.all(beams.sequences_scores[:-1:3] >= beams.sequences_scores[1::3])
    # the greedy path made known: the final norm outputs a constant, token 7's embedding scaled up, so every step
    # has the same logits and token 7 leads them by far
    with torch.no_grad():
        row = model.model.embed_tokens.weight[7]
        model.model.norm.weight.zero_()
        model.model.norm.bias.copy_(30 * row / row.norm())
    logits = model(ids[:1]).logits[0, -1]
    kw = dict(max_new_tokens=20, do_sample=False, eos_token_id=None)
    assert model.generate(ids[:1], **kw)[0, 6:].tolist() == [7] * 20
    # a huge penalty forbids every token already in the sequence, prompt included: the next best unseen ones follow
    unseen = [t for t in logits.argsort(descending=True).tolist() if t not in ids[0].tolist()][:20]
    assert logits[unseen[-1]] > 0.1  # so none of them falls below a penalized (divided by 1e6) one
    assert model.generate(ids[:1], repetition_penalty=1e6, **kw)[0, 6:].tolist() == unseen


def test_streaming_yields_every_token():
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.flatten().tolist())

        def end(self):
            self.chunks.append("end")

    model, streamer = tiny(), Collect()
    ids = prompt(1)
    out = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None, streamer=streamer)
    assert streamer.chunks[0] == ids[0].tolist() and streamer.chunks[-1] == "end"
    assert sum(streamer.chunks[1:-1], []) == out[0, 6:].tolist()


def test_tied_embeddings_gradient_checkpointing_and_resize():
    model = tiny()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tiny("tiny-llama", tie_word_embeddings=False).lm_head.weight is not None
    model.train()
    model.gradient_checkpointing_enable()
    ids = prompt(2, 10)
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    model.resize_token_embeddings(100)
    assert model.config.vocab_size == 100 and model.lm_head.weight.shape == (100, 128)
    assert model(torch.tensor([[99]])).logits.shape == (1, 1, 100)


def test_num_parameters_matches_gpt2_small():
    with torch.device("meta"):
        model = MiniGPTForCausalLM(MiniGPTConfig.from_preset("gpt2"))
    assert model.num_parameters() == 124_439_808  # the published GPT-2 small count, tied head
    assert set(MINIGPT_PRESETS) >= {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-small", "tiny"}


def test_bf16_load_and_auto_classes(tmp_path):
    model = tiny("tiny-llama")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and isinstance(loaded, MiniGPTForCausalLM)
    ids = prompt(1)
    torch.testing.assert_close(loaded(ids).logits.float(), model(ids).logits, atol=0.1, rtol=0.1)
    cls = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    assert isinstance(cls, MiniGPTForSequenceClassification)
    torch.testing.assert_close(cls.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_hidden_states_and_attentions_are_recorded():
    model = tiny()
    model.config._attn_implementation = "eager"
    out = model(prompt(1), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 5 and len(out.attentions) == 4
    assert out.attentions[0].shape == (1, 4, 6, 6)
    assert torch.all(out.attentions[0][0, :, 0, 1:] == 0)  # causal


def test_sequence_classification_pools_last_non_pad_token_left_or_right():
    model = MiniGPTForSequenceClassification(MiniGPTConfig.from_preset("tiny", vocab_size=96, pad_token_id=0,
                                                                       num_labels=2)).eval()
    row = prompt(1, 5)
    right = torch.cat([row, torch.zeros(1, 3, dtype=torch.long)], 1)
    alone = model(row).logits
    torch.testing.assert_close(model(right).logits, alone, atol=1e-5, rtol=1e-5)
    left = torch.cat([torch.zeros(1, 3, dtype=torch.long), row], 1)
    mask = (left != 0).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() derives for left padding
    model.config.pad_token_id = None
    torch.testing.assert_close(model(left, attention_mask=mask, position_ids=positions).logits, alone,
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pad_token_id or an attention_mask"):
        model(torch.cat([row, row]))


def test_bad_input_is_named():
    model = tiny()
    with pytest.raises(ValueError, match="token id 96, outside the vocabulary"):
        model(torch.tensor([[1, 96]]))
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        model(prompt(1, 65))
    with pytest.raises(ValueError, match="preset='gpt5'"):
        MiniGPTConfig.from_preset("gpt5")


@pytest.fixture(scope="module")
def tokenizer_and_folder(tmp_path_factory):
    from modeling_minigpt.tokenization import train_tokenizer

    folder = tmp_path_factory.mktemp("gpt")
    torch.manual_seed(0)
    text = [f"the quick brown fox {i} jumps over the lazy dog." for i in range(200)]
    tok = train_tokenizer(texts=text, vocab_size=400, family="gpt", show_progress=False)
    config = MiniGPTConfig.from_preset("tiny", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    MiniGPTForCausalLM(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok, folder


class FollowScript(LogitsProcessor):
    """Makes the greedy path known: step i can only pick ``script[i]``, whatever the random model scores."""

    def __init__(self, script, prompt_length):
        self.script, self.prompt_length = script, prompt_length

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.script[input_ids.shape[1] - self.prompt_length]] = 0.0
        return forced


@pytest.mark.parametrize("stop", [" over", "fox 42 j", "laz", "quick"],
                         ids=["whole-token", "across-tokens-ending-mid-token", "ending-mid-token", "prompt-only"])
def test_stop_strings_end_generation(tokenizer_and_folder, stop):
    tok, folder = tokenizer_and_folder
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok("the quick", return_tensors="pt").input_ids
    script = tok(" brown fox 42 jumps over the lazy dog.").input_ids
    assert len(script) > 8 and tok.decode(script) == " brown fox 42 jumps over the lazy dog."

    def generate(**kw):
        out = model.generate(ids, max_new_tokens=len(script), do_sample=False, eos_token_id=None,
                             logits_processor=LogitsProcessorList([FollowScript(script, ids.shape[1])]), **kw)
        return out[0, ids.shape[1]:].tolist()

    assert generate() == script  # without a stop string the whole script comes out
    # generation ends at the token that completes the stop string (a stop string only in the prompt ends nothing)
    cut = next((k + 1 for k in range(len(script)) if stop in tok.decode(script[:k + 1])), len(script))
    assert generate(stop_strings=[stop], tokenizer=tok) == script[:cut]
    assert (cut < len(script)) == (stop != "quick")


def test_text_generation_pipeline_from_folder(tokenizer_and_folder):
    from transformers import pipeline

    _, folder = tokenizer_and_folder
    pipe = pipeline("text-generation", model=str(folder), trust_remote_code=True)
    # special tokens suppressed: the random model cannot end at once on EOS or produce no text
    out = pipe("the quick brown", max_new_tokens=5, do_sample=False, suppress_tokens=pipe.tokenizer.all_special_ids)
    assert out[0]["generated_text"].startswith("the quick brown")
    assert len(out[0]["generated_text"]) > len("the quick brown")
