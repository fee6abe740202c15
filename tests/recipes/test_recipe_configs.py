"""Every recipe YAML parses against its script's parser; every launch profile loads with accelerate's reader."""

import importlib
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "recipes" / "configs").rglob("*.yaml"))
PROFILES = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))


def load_recipe(name: str):
    """Import recipes/<name>.py as a module (recipes/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_of(config: Path) -> str:
    """The script a config belongs to: the ``recipes/<script>.py`` its usage comment names."""
    match = re.search(r"recipes/(\w+)\.py", config.read_text())
    if match is None:
        raise AssertionError(f"{config} names no recipes/<script>.py in its comments")
    return match.group(1)


def test_there_are_configs_and_profiles():
    names = {f"{p.parent.name}/{p.name}" for p in CONFIGS}
    assert {"gpt/tiny_pretrain.yaml", "bert/tiny_pretrain.yaml", "t5/tiny_pretrain.yaml",
            "gpt/gpt2_124m.yaml"} <= names
    assert {p.stem for p in PROFILES} >= {"cpu", "single_gpu", "multi_gpu", "fsdp", "deepspeed"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses_with_its_script(config):
    script = load_recipe(script_of(config))
    parsed = script.make_parser().parse_args_and_config(["--config", str(config)])
    by_name = {type(obj).__name__: obj for obj in parsed}
    if script_of(config) == "pretrain":
        model_args, data_args = by_name["ModelArguments"], by_name["DataArguments"]
        args = by_name["PretrainingArguments"]
        assert model_args.family == config.parent.name  # configs/<family>/...
        assert args.output_dir.startswith("runs/")
        for files in data_args.data_files or []:
            assert (REPO / files).is_file(), f"{config} points at a missing corpus {files}"


def test_cli_overrides_config():
    script = load_recipe("pretrain")
    config = REPO / "recipes" / "configs" / "gpt" / "tiny_pretrain.yaml"
    _, _, args = script.make_parser().parse_args_and_config(
        ["--config", str(config), "--max_steps", "7", "--lr_scheduler_kwargs", '{"min_lr_rate": 0.5}'])
    assert args.max_steps == 7 and args.lr_scheduler_kwargs == {"min_lr_rate": 0.5}
    assert args.learning_rate == yaml.safe_load(config.read_text())["learning_rate"]


@pytest.mark.parametrize("field", ["save_steps", "eval_steps", "logging_steps", "max_steps"])
def test_non_positive_steps_are_rejected(field):
    script = load_recipe("pretrain")
    config = REPO / "recipes" / "configs" / "gpt" / "tiny_pretrain.yaml"
    with pytest.raises(ValueError, match=f"{field}=0 must be a positive integer"):
        script.make_parser().parse_args_and_config(["--config", str(config), f"--{field}", "0"])


def test_unknown_config_key_is_rejected(tmp_path):
    script = load_recipe("pretrain")
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: runs/x\ndata_files: [a.txt]\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        script.make_parser().parse_args_and_config(["--config", str(bad)])


@pytest.mark.parametrize("text, needle", [
    ("output_dir: runs/x\ndata_files: [a.txt]\nlearning_rat: 0.1\n", "unknown field(s) learning_rat"),
    ("family: gpt\n  bad: [\n", "not valid YAML"),
    ("output_dir: runs/x\ndata_files: [a.txt]\nmodel_config: [1, 2]\n", "model_config=[1, 2] must be a mapping"),
])
def test_a_bad_config_file_is_one_error_naming_the_file(tmp_path, text, needle):
    script = load_recipe("pretrain")
    common = importlib.import_module("common")  # recipes/ is on sys.path once a recipe is loaded
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=re.escape(needle)) as err:
        common.parse(script.make_parser(), ["--config", str(bad)])
    assert str(bad) in str(err.value) or "model_config" in needle


def test_bad_args_give_one_line_and_exit_2_without_traceback():
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "recipes/pretrain.py", "--config", "recipes/configs/gpt/tiny_pretrain.yaml",
                           "--save_steps", "0"], cwd=REPO, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2
    assert "save_steps=0 must be a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.perf_counter() - start < 60  # fails while parsing, before torch is imported


def test_help_is_fast_and_lists_fields():
    proc = subprocess.run([sys.executable, "recipes/pretrain.py", "--help"], cwd=REPO, capture_output=True,
                          text=True, check=False, timeout=60)
    assert proc.returncode == 0
    for field in ("--output_dir", "--max_steps", "--save_steps", "--family", "--data_files", "--block_size"):
        assert field in proc.stdout
    code = ("import runpy, sys\nsys.argv = ['pretrain.py', '--help']\n"
            "try:\n    runpy.run_path('recipes/pretrain.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    probe = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False,
                           timeout=60)
    assert probe.stdout.strip().splitlines()[-1] == "False"


# ---------------------------------------------------------------------------------------------------------------
# Launch profiles
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_profile_loads_with_accelerate(profile):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(profile))
    expected = {"cpu": "MULTI_GPU", "single_gpu": "NO", "multi_gpu": "MULTI_GPU", "fsdp": "FSDP",
                "deepspeed": "DEEPSPEED"}
    assert config.distributed_type.value == expected[profile.stem]
    if profile.stem == "cpu":
        assert config.mixed_precision == "no" and not config.use_cpu and config.num_processes == 2
    else:
        assert config.mixed_precision == "bf16"
    if profile.stem == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "TransformerLayer"
    if profile.stem == "deepspeed":
        assert config.deepspeed_config["zero_stage"] in (2, 3)


def test_a_mapping_on_the_command_line_updates_the_config_files_mapping():
    script = load_recipe("pretrain")
    common = importlib.import_module("common")
    config = REPO / "recipes" / "configs" / "bert" / "tiny_pretrain.yaml"
    model_args = common.parse(script.make_parser(), ["--config", str(config),
                                                     "--model_config", '{"num_hidden_layers": 2}'])[0]
    assert model_args.model_config["num_hidden_layers"] == 2
    assert model_args.model_config["hidden_size"] == yaml.safe_load(config.read_text())["model_config"]["hidden_size"]
