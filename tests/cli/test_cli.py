"""The `minigpt` console script: --help speed, train-tokenizer, generate, chat, and clean one-line errors (exit 2,
no traceback) for bad input. One subprocess per command proves the real entry point (each costs a full torch import,
5-10 s); the variants call ``minigpt_cli.main`` in-process."""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minigpt_cli import COMMANDS, main
from modeling_minigpt import MiniGPTConfig, MiniGPTForCausalLM
from modeling_minigpt.tokenization import train_tokenizer

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"
SCRIPT = Path(sys.executable).parent / "minigpt"


def minigpt(*args, stdin=None, timeout=120):
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "minigpt_cli"]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("MINIGPT_DEBUG", None)
    return subprocess.run(cmd + [str(a) for a in args], input=stdin, capture_output=True, text=True,
                          encoding="utf-8", timeout=timeout, env=env)


def minigpt_inprocess(capsys, monkeypatch, *args, stdin=""):
    """(exit code, stdout, stderr) of ``minigpt ARGS`` run in this process."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    monkeypatch.delenv("MINIGPT_DEBUG", raising=False)
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random tiny MiniGPT saved with a 512-token gpt tokenizer."""
    path = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(texts=[SHAKESPEARE.read_text(encoding="utf-8")[:100_000]], vocab_size=512,
                          output_dir=str(path), show_progress=False)
    config = MiniGPTConfig.from_preset("tiny", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = MiniGPTForCausalLM(config).eval()
    model.save_pretrained(path)
    return path, model, tok


def test_help_is_fast_and_lists_commands():
    minigpt("--help")  # warm the file cache
    start = time.perf_counter()
    proc = minigpt("--help")
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0
    assert elapsed < 1.0, f"minigpt --help took {elapsed:.2f}s"
    for name in COMMANDS:
        assert name in proc.stdout


def test_every_command_help_is_fast():
    # The flags live in minigpt_cli, so `minigpt COMMAND --help` imports neither torch nor transformers.
    for name in COMMANDS:
        minigpt(name, "--help")  # warm the file cache
        start = time.perf_counter()
        proc = minigpt(name, "--help")
        elapsed = time.perf_counter() - start
        assert proc.returncode == 0 and f"minigpt {name}" in proc.stdout
        assert elapsed < 1.0, f"minigpt {name} --help took {elapsed:.2f}s"


def test_the_cli_choices_are_the_modules_choices():
    from minigpt_cli import FAMILIES, FITS
    from modeling_minigpt import planning, tokenization

    assert FAMILIES == tokenization.FAMILIES and FITS == tuple(planning.FITS)


@pytest.mark.slow
def test_train_tokenizer_end_to_end(tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "tok"
    proc = minigpt("train-tokenizer", "--input", SHAKESPEARE, "--vocab-size", 600, "--family", "bert",
                   "--output", out, "--min-frequency", 3)
    assert proc.returncode == 0, proc.stderr
    assert "600" in proc.stdout and str(out) in proc.stdout
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 600 and tok.cls_token == "[CLS]" and tok.mask_token_id == 4


def test_train_tokenizer_missing_file_is_one_clean_line(tmp_path):
    proc = minigpt("train-tokenizer", "--input", SHAKESPEARE, "no/such/file.txt", "--vocab-size", 600,
                   "--output", tmp_path / "tok")
    assert proc.returncode == 2
    assert "no/such/file.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "tok").exists()


@pytest.mark.parametrize("name, vocab, needle", [
    ("absent.txt", 600, "absent.txt"), ("empty.txt", 600, "empty.txt"), (None, 100, "vocab_size=100"),
])
def test_train_tokenizer_bad_input_in_process(capsys, monkeypatch, tmp_path, name, vocab, needle):
    (tmp_path / "empty.txt").write_text("")
    path = tmp_path / name if name else SHAKESPEARE
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "train-tokenizer", "--input", path,
                                       "--vocab-size", vocab, "--output", tmp_path / "tok")
    assert code == 2 and needle in err and err.startswith("minigpt train-tokenizer: error:")
    assert not (tmp_path / "tok").exists()


def test_train_tokenizer_output_that_is_a_file_and_input_that_is_not_text(capsys, monkeypatch, tmp_path):
    (tmp_path / "afile").write_text("keep me")
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "train-tokenizer", "--input", SHAKESPEARE,
                                       "--vocab-size", 300, "--output", tmp_path / "afile")
    assert code == 2 and "is a file, not a folder" in err and (tmp_path / "afile").read_text() == "keep me"
    (tmp_path / "latin1.txt").write_bytes("Ça va? Très bien, à demain.\n".encode("latin-1") * 50)
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "train-tokenizer", "--input", SHAKESPEARE,
                                       tmp_path / "latin1.txt", "--vocab-size", 300, "--output", tmp_path / "tok")
    assert code == 2 and "latin1.txt" in err and "not UTF-8" in err and not (tmp_path / "tok").exists()
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "train-tokenizer", "--input", tmp_path,
                                       "--vocab-size", 300, "--output", tmp_path / "tok")
    assert code == 2 and "is a folder" in err
    (tmp_path / "small.txt").write_text("hello world\n")
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "train-tokenizer", "--input", tmp_path / "small.txt",
                                       "--vocab-size", 5000, "--output", tmp_path / "tok")
    assert code == 0 and "(not 5000: the corpus offers no more merges)" in out


def _continuation(model, tok, ids, **kwargs):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=tok.pad_token_id, **kwargs)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_generate_greedy_streams_the_greedy_continuation(tiny_model):
    path, model, tok = tiny_model
    proc = minigpt("generate", path, "--prompt", "ROMEO:", "--max-new-tokens", 24, "--greedy")
    assert proc.returncode == 0, proc.stderr
    expected = _continuation(model, tok, tok("ROMEO:", return_tensors="pt")["input_ids"], max_new_tokens=24,
                             do_sample=False)
    assert expected and proc.stdout == "ROMEO:" + expected + "\n"


def test_generate_sampling_follows_the_seed(capsys, monkeypatch, tiny_model):
    from transformers import set_seed

    path, model, tok = tiny_model
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "generate", path, "--prompt", "JULIET:",
                                       "--max-new-tokens", 24, "--temperature", 1.5, "--top-k", 40, "--top-p", 0.9,
                                       "--seed", 7)
    assert code == 0, err
    set_seed(7)
    expected = _continuation(model, tok, tok("JULIET:", return_tensors="pt")["input_ids"], max_new_tokens=24,
                             do_sample=True, temperature=1.5, top_k=40, top_p=0.9)
    greedy = _continuation(model, tok, tok("JULIET:", return_tensors="pt")["input_ids"], max_new_tokens=24,
                           do_sample=False)
    assert out == "JULIET:" + expected + "\n" and expected != greedy


@pytest.fixture(scope="module")
def not_models(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("not_models")
    (root / "empty").mkdir()
    (root / "junk").mkdir()
    (root / "junk" / "config.json").write_text('{"hello": 1}')
    (root / "junk" / "tokenizer.json").write_text((tiny_model[0] / "tokenizer.json").read_text())
    (root / "no_tokenizer").mkdir()
    (root / "no_tokenizer" / "config.json").write_text((tiny_model[0] / "config.json").read_text())
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=512, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(root / "bert")
    tiny_model[2].save_pretrained(root / "bert")
    return root


def test_generate_on_a_non_model_folder_is_one_clean_line(not_models):
    proc = minigpt("generate", not_models / "junk", "--prompt", "hi")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "not a transformers model" in proc.stderr and str(not_models / "junk") in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name, needle", [
    ("missing", "does not exist"), ("empty", "no config.json"), ("junk", "not a transformers model"),
    ("bert", "not a causal LM"), ("no_tokenizer", "has no tokenizer"),
])
def test_generate_non_model_folders_in_process(capsys, monkeypatch, not_models, name, needle):
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "generate", not_models / name, "--prompt", "hi")
    assert code == 2 and out == "" and needle in err and str(not_models / name) in err


@pytest.mark.parametrize("option, value, needle", [
    ("--top-p", "1.5", "--top-p=1.5"), ("--temperature", "0", "--temperature=0.0"),
    ("--max-new-tokens", "0", "--max-new-tokens=0"), ("--top-k", "-1", "--top-k=-1"),
])
def test_generate_rejects_bad_sampling_options(capsys, monkeypatch, tiny_model, option, value, needle):
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "generate", tiny_model[0], "--prompt", "hi",
                                       option, value)
    assert code == 2 and out == "" and needle in err


@pytest.mark.parametrize("args, needle", [
    (("--prompt", ""), "--prompt is empty"), (("--prompt", "hi", "--device", "banana"), "--device='banana'"),
    (("--prompt", "hi", "--device", "cuda:7"), "no cuda device"),
])
def test_generate_rejects_an_empty_prompt_and_unknown_devices(capsys, monkeypatch, tiny_model, args, needle):
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "generate", tiny_model[0], *args)
    assert code == 2 and out == "" and needle in err


def test_generate_on_damaged_files_names_what_is_damaged(capsys, monkeypatch, tmp_path, tiny_model):
    import shutil

    for name, damaged in (("weights", "model.safetensors"), ("tokenizer", "tokenizer.json")):
        shutil.copytree(tiny_model[0], tmp_path / name)
        (tmp_path / name / damaged).write_bytes((tmp_path / name / damaged).read_bytes()[:40])  # cut short
        code, out, err = minigpt_inprocess(capsys, monkeypatch, "generate", tmp_path / name, "--prompt", "hi")
        assert code == 2 and f"cannot load the {name}" in err and str(tmp_path / name) in err
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "generate", tiny_model[0] / "config.json",
                                       "--prompt", "hi")
    assert code == 2 and "is a file: give the model folder" in err


def test_generate_runs_no_code_from_the_folder_unless_trusted(capsys, monkeypatch, tmp_path, tiny_model):
    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    (folder / "config.json").write_text('{"model_type": "custom", "auto_map": {"AutoConfig": "conf.CustomConfig"}}')
    (folder / "conf.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (folder / "tokenizer.json").write_text((tiny_model[0] / "tokenizer.json").read_text())
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "generate", folder, "--prompt", "hi")
    assert code == 2 and "--trust-remote-code" in err and not marker.exists()


def test_rotary_models_may_generate_past_the_trained_length(capsys, monkeypatch, tmp_path, tiny_model):
    # Only a learned position table has a hard end; RoPE runs on (less well) past max_position_embeddings.
    tok = tiny_model[2]
    config = MiniGPTConfig.from_preset("tiny-llama", vocab_size=len(tok), max_position_embeddings=16,
                                       pad_token_id=tok.pad_token_id, eos_token_id=None)
    MiniGPTForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "generate", tmp_path, "--prompt", "ROMEO:",
                                       "--max-new-tokens", 40, "--greedy")
    assert code == 0, err
    assert len(tok(out.rstrip("\n"))["input_ids"]) > 16  # the prompt and 40 new tokens


def test_generate_prompt_longer_than_the_context_is_a_clean_error(capsys, monkeypatch, tiny_model):
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "generate", tiny_model[0], "--prompt", "ab " * 300)
    assert code == 2 and "max_position_embeddings=256" in err


@pytest.mark.slow
def test_chat_answers_each_line_and_keeps_history(tiny_model):
    path, model, tok = tiny_model
    proc = minigpt("chat", path, "--system", "Speak in verse.", "--max-new-tokens", 12, "--greedy",
                   stdin="Good morrow\nWhat news?\n")
    assert proc.returncode == 0, proc.stderr
    history, replies = [{"role": "system", "content": "Speak in verse."}], []
    stops = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    for line in ("Good morrow", "What news?"):
        history.append({"role": "user", "content": line})
        ids = tok.apply_chat_template(history, add_generation_prompt=True, return_dict=True,
                                      return_tensors="pt")["input_ids"]
        replies.append(_continuation(model, tok, ids, max_new_tokens=12, do_sample=False, eos_token_id=stops))
        history.append({"role": "assistant", "content": replies[-1]})
    assert all(replies) and proc.stdout == "".join(r + "\n" for r in replies)


def test_chat_stops_at_the_end_of_text_token(capsys, monkeypatch, tmp_path, tiny_model):
    # minigpt's gpt tokenizer makes <|endoftext|> eos and unk at once: it must still stop a reply.
    from transformers import GenerationMixin

    path, model, tok = tiny_model
    config = model.config.to_dict() | {"tie_word_embeddings": False}
    untied = MiniGPTForCausalLM(MiniGPTConfig(**{k: v for k, v in config.items() if k in MiniGPTConfig().to_dict()}))
    torch.nn.init.zeros_(untied.lm_head.weight)  # every logit 0: greedy picks id 0, <|endoftext|>
    untied.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert tok.eos_token_id == tok.unk_token_id == 0
    lengths, generate = [], GenerationMixin.generate

    def spy(self, input_ids=None, **kwargs):
        out = generate(self, input_ids=input_ids, **kwargs)
        lengths.append(out.shape[1] - input_ids.shape[1])
        return out

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "chat", tmp_path, "--greedy", "--max-new-tokens", 30,
                                       stdin="hello\n")
    assert code == 0 and lengths == [1]


def test_chat_exits_on_slash_exit(capsys, monkeypatch, tiny_model):
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "chat", tiny_model[0], "--max-new-tokens", 4,
                                       stdin="/exit\nnever answered\n")
    assert code == 0 and out == ""


def test_chat_history_is_trimmed_to_fit_the_context(capsys, monkeypatch, tiny_model):
    long_line = "Now is the winter of our discontent " * 12  # about 100 tokens a turn, 256 positions
    code, out, err = minigpt_inprocess(capsys, monkeypatch, "chat", tiny_model[0], "--max-new-tokens", 16,
                                       "--greedy", stdin=f"{long_line}\n" * 3)
    assert code == 0, err  # untrimmed, the 3rd turn would overflow the 256 learned positions
