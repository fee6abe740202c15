"""The export gate: a saved folder loads for a stranger who does not have minigpt installed.

Every registered head of every family is saved, then reloaded through its Auto class with
``trust_remote_code=True`` in a fresh Python process where importing ``modeling_minigpt`` fails.
The reloaded model must come from the copied code and give the same outputs.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

import modeling_minigpt
from modeling_minigpt import MiniBertConfig, MiniGPTConfig, MiniT5Config

SHIPPED = {"configuration_minigpt.py", "minigpt_layers.py"}
TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32, head_dim=8, pad_token_id=0, eos_token_id=1)
CONFIGS = {
    MiniGPTConfig: lambda: MiniGPTConfig(**TINY, bos_token_id=1),
    MiniBertConfig: lambda: MiniBertConfig(**TINY),
    MiniT5Config: lambda: MiniT5Config(**TINY, decoder_start_token_id=0),
}
CASES = [(cfg_cls, auto_cls.__name__, model_cls)
         for cfg_cls, heads in modeling_minigpt._REGISTRY for auto_cls, model_cls in heads.items()]

STRANGER = textwrap.dedent("""
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_minigpt", "minigpt_cli"):
                raise ImportError("minigpt is not installed for this user")
    sys.meta_path.insert(0, Block())
    import torch, transformers
    from safetensors.torch import load_file
    try:
        import modeling_minigpt
        sys.exit("modeling_minigpt must not be importable here")
    except ImportError:
        pass
    results = {}
    for folder, auto_name in json.loads(sys.argv[1]):
        model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True).eval()
        inputs = load_file(folder + "/inputs.safetensors")
        with torch.no_grad():
            out = model(**inputs)
        first = out[0] if not hasattr(out, "logits") else out.logits
        expected = load_file(folder + "/expected.safetensors")["out"]
        results[folder] = {"module": type(model).__module__, "cls": type(model).__name__,
                           "max_diff": (first - expected).abs().max().item()}
    print(json.dumps(results))
""")


def _inputs(config):
    ids = torch.randint(2, config.vocab_size, (2, 7))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if config.is_encoder_decoder:
        inputs["decoder_input_ids"] = ids[:, :4]
    return inputs


def _stranger(jobs, tmp, trust=True):
    """Run STRANGER once over [(folder, auto class name)]: one interpreter start for every head."""
    script = STRANGER if trust else STRANGER.replace("trust_remote_code=True", "trust_remote_code=False")
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp / "modules"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], capture_output=True, text=True,
                          env=env, cwd=tmp, timeout=600)


@pytest.fixture(scope="module")
def stranger_results(tmp_path_factory):
    """Save every head of every family, then load them all where minigpt is not importable."""
    root = tmp_path_factory.mktemp("export")
    jobs, saved = [], {}
    for i, (cfg_cls, auto_name, model_cls) in enumerate(CASES):
        folder = root / f"{i}-{model_cls.__name__}"
        model = model_cls(CONFIGS[cfg_cls]()).eval()
        model.save_pretrained(folder)
        inputs = _inputs(model.config)
        with torch.no_grad():
            out = model(**inputs)
        save_file({k: v.contiguous() for k, v in inputs.items()}, folder / "inputs.safetensors")
        save_file({"out": (out[0] if not hasattr(out, "logits") else out.logits).contiguous()},
                  folder / "expected.safetensors")
        jobs.append((str(folder), auto_name))
        saved[model_cls] = folder
    proc = _stranger(jobs, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {cls: (folder, results[str(folder)]) for cls, folder in saved.items()}


@pytest.mark.parametrize("cfg_cls,auto_name,model_cls", CASES,
                         ids=[f"{c.model_type}-{a}" for c, a, _ in CASES])
def test_stranger_loads_every_head_with_trust_remote_code(stranger_results, cfg_cls, auto_name, model_cls):
    folder, result = stranger_results[model_cls]
    saved = json.loads((folder / "config.json").read_text())
    registered = {a.__name__ for c, heads in modeling_minigpt._REGISTRY if c is cfg_cls for a in heads}
    assert set(saved["auto_map"]) == registered | {"AutoConfig"}, "auto_map must list every head of the family"
    code = {p.name for p in folder.glob("*.py")}
    assert SHIPPED <= code and any(name.startswith("modeling_minigpt_") for name in code)
    for path in folder.glob("*.py"):  # shipped files import only torch, transformers and flat siblings
        for line in path.read_text().splitlines():
            assert not line.lstrip().startswith(("from modeling_minigpt", "import modeling_minigpt", "from ..")), line
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    assert result["module"].startswith("transformers_modules"), result
    assert result["cls"] == model_cls.__name__
    assert result["max_diff"] < 1e-5


def test_without_trust_remote_code_loading_is_refused(tmp_path):
    modeling_minigpt.MiniGPTForCausalLM(CONFIGS[MiniGPTConfig]()).save_pretrained(tmp_path / "m")
    proc = _stranger([(str(tmp_path / "m"), "AutoModelForCausalLM")], tmp_path, trust=False)
    assert proc.returncode != 0 and "trust_remote_code" in proc.stderr
