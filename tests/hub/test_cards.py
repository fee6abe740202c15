"""Model cards carry the run's real numbers; push goes through HfApi (mocked: no network in tests)."""

import json

import pytest
from huggingface_hub import ModelCard

from minigpt_cli import main
from modeling_minigpt import MiniGPTConfig, MiniGPTForCausalLM, hub


@pytest.fixture
def run_folder(tmp_path):
    model = MiniGPTForCausalLM(MiniGPTConfig.from_preset("tiny", vocab_size=64))
    model.save_pretrained(tmp_path)
    rows = [{"step": 10, "loss": 3.2, "lr": 1e-3, "tokens": 1280},
            {"step": 20, "eval_loss": 2.5, "eval_bits_per_byte": 2.41, "eval_perplexity": 12.18},
            {"step": 20, "eval_loss": 2.4, "eval_bits_per_byte": None}]  # masked LMs log no bits/byte
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "loss.png").write_bytes(b"\x89PNG")
    return tmp_path, model.num_parameters()


def test_card_states_the_runs_metrics_and_lineage(run_folder):
    folder, n_params = run_folder
    hub.render_model_card(folder, repo_id="me/tiny", stage="SFT", base_model="me/tiny-base", datasets=["x/y"])
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.base_model == "me/tiny-base" and "minigpt" in card.data.tags
    text = card.text
    assert "| eval_bits_per_byte | 2.41 |" in text and "| loss | 3.2 |" in text and "| eval_loss | 2.4 |" in text
    assert "None" not in text
    assert f"{n_params:,}" in text and "![loss curve](loss.png)" in text
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny", trust_remote_code=True)' in text
    assert "fine-tuned (SFT) from `me/tiny-base`" in text


def test_push_renders_card_and_uploads(run_folder, monkeypatch):
    folder, _ = run_folder
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload", kw["repo_id"], kw))

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    assert main(["push", str(folder), "--repo-id", "me/tiny", "--private"]) == 0
    assert calls[0] == ("create", "me/tiny", {"private": True, "exist_ok": True})
    assert calls[1][2]["folder_path"] == str(folder) and (folder / "README.md").exists()
    assert "checkpoint-*/**" in calls[1][2]["ignore_patterns"]


def test_bad_folders_are_named(tmp_path, capsys):
    assert main(["card", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert main(["card", str(tmp_path)]) == 2
    assert "model_type='bert' is not a minigpt family" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"model_type": "minigpt"}')
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    assert main(["card", str(tmp_path)]) == 2
    assert "metrics.jsonl:2: not a JSON object" in capsys.readouterr().err
