"""Pretraining end to end: data, tokenizer, model, the loop, the Hub-ready folder. ``recipes/pretrain.py`` is
the command line; this module holds the work so that later recipes and tests can call it.

    corpus ─ split ─ tokenizer (trained on train, unless given) ─ pack ─ model ─ train ─ output_dir/
        causal LM (gpt) | masked LM (bert) | span corruption (t5)
"""

import json
import logging
import os
from dataclasses import asdict, is_dataclass

from .loop import Objective, train

logger = logging.getLogger(__name__)

# family: (config class, model class, objective)
FAMILIES = {
    "gpt": ("MiniGPTConfig", "MiniGPTForCausalLM", "causal"),
    "bert": ("MiniBertConfig", "MiniBertForMaskedLM", "mlm"),
    "t5": ("MiniT5Config", "MiniT5ForConditionalGeneration", "span"),
}
TRACKERS = ("tensorboard", "trackio", "wandb")
# The arguments that fix a run's data, tokenizer and model. A relaunch into the same output_dir resumes that run,
# so these must match the run.json there; the others (max_steps, learning rate, logging...) may change.
RUN_IDENTITY = {
    "model_args": ("family", "model_name_or_path", "model_preset", "model_config", "tokenizer_name_or_path",
                   "vocab_size", "block_size"),
    "data_args": ("data_files", "dataset_name", "dataset_config", "dataset_text_field", "dataset_streaming",
                  "split_by", "validation_split_size", "test_split_size"),
    "training_args": ("seed",),
}


def make_accelerator(args):
    """Accelerator set up for bit-identical resume (see loop.py); precision and compile follow the flags when
    given, else the launch profile."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import GradientAccumulationPlugin, TorchDynamoPlugin

    _use_cpu_when_no_accelerator()
    _set_tf32(getattr(args, "tf32", True))
    kwargs = {}
    if args.bf16 is not None:
        kwargs["mixed_precision"] = "bf16" if args.bf16 else "no"
    if args.torch_compile:
        kwargs["dynamo_plugin"] = TorchDynamoPlugin(backend="inductor")
    trackers = report_to(args)
    accelerator = Accelerator(
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        step_scheduler_with_optimizer=False,  # stepped once per optimizer step ourselves (see NOTES: DDP)
        log_with=trackers or None, project_dir=args.output_dir, **kwargs)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:  # the silent fallback NOTES-v5 warns about: refuse to train
        raise ValueError(f"{launched} processes were launched but accelerate formed a group of "
                           f"{accelerator.num_processes} ({accelerator.distributed_type.value}); on CPU launch with "
                           "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...")
    return accelerator


def _set_tf32(enabled: bool) -> None:
    """fp32 matmuls on TF32 tensor cores (Ampere and newer), as nanoGPT does; torch leaves them off by default."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)


def _use_cpu_when_no_accelerator() -> None:
    """On a machine without GPUs, torchrun workers only form a gloo group when ACCELERATE_USE_CPU is set; set it,
    so ``accelerate launch --config_file recipes/accelerate/cpu.yaml`` runs real DDP instead of N lone copies."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "1"


def report_to(args) -> list[str]:
    """Tracker names from ``report_to`` ("none", "all", or a comma-separated list); installed ones only for "all"."""
    import importlib.util

    value = args.report_to if isinstance(args.report_to, str) else ",".join(args.report_to or [])
    names = [n.strip() for n in value.split(",") if n.strip() and n.strip() != "none"]
    if names == ["all"]:
        return [n for n in TRACKERS if importlib.util.find_spec(n)]
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"report_to={name!r} is not supported; use none, all or {', '.join(TRACKERS)}")
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"report_to={name!r} needs the {name} package: pip install {name}")
    return names


def pretrain(model_args, data_args, args) -> dict:
    """Run one pretraining job; returns the loop's result (see ``loop.train``) plus the output folder."""
    from transformers import set_seed

    from ..data.packing import load_corpus, pack_corpus

    if model_args.family not in FAMILIES:
        raise ValueError(f"family={model_args.family!r} is unknown; choose one of {', '.join(FAMILIES)}")
    start_over = check_output_dir(args.output_dir, model_args, data_args, args)
    accelerator = make_accelerator(args)
    if accelerator.is_main_process:  # before the tokenizer lands there: the folder now belongs to this run
        write_run_info(accelerator, args.output_dir, model_args, data_args, args, stats=None,
                       keep_existing=not start_over)
    logger.info("world_size=%d distributed_type=%s mixed_precision=%s device=%s", accelerator.num_processes,
                accelerator.distributed_type.value, accelerator.mixed_precision, accelerator.device)
    set_seed(args.seed)
    with accelerator.main_process_first():
        corpus = load_corpus(
            data_files=data_args.data_files, dataset_name=data_args.dataset_name,
            dataset_config=data_args.dataset_config, text_column=data_args.dataset_text_field,
            validation_fraction=data_args.validation_split_size, test_fraction=data_args.test_split_size,
            split_by=data_args.split_by, seed=args.seed, streaming=data_args.dataset_streaming,
            streaming_validation_documents=data_args.streaming_validation_documents)
    tokenizer = load_or_train_tokenizer(accelerator, model_args, corpus, args.output_dir, reuse=not start_over)
    config = build_config(model_args, tokenizer)
    packed_length, target_length = sample_lengths(model_args, data_args)
    with accelerator.main_process_first():
        packed = pack_corpus(corpus, tokenizer, packed_length, data_args.dataset_num_proc,
                             data_args.dataset_cache_dir)
    set_seed(args.seed)  # the same initial weights whatever ran before
    model = build_model(model_args, config, args)
    objective = build_objective(model_args, config, packed, packed_length, target_length)
    collator = build_collator(model_args, data_args, tokenizer, target_length, args.seed)
    if accelerator.is_main_process:
        write_run_info(accelerator, args.output_dir, model_args, data_args, args, packed.stats)
    if accelerator.log_with:
        accelerator.init_trackers(os.path.basename(os.path.normpath(args.output_dir)), _scalars(args))
    splits = packed.splits
    if model_args.family == "gpt":  # rows as tensors: python lists of ints cost ~6 ms per 16 x 1024 batch
        splits = {name: split.with_format("torch") for name, split in splits.items()}
    result = train(accelerator, model, splits["train"], splits.get("validation"), collator, objective, args)
    if result["stopped_by"] is None:
        finish(accelerator, result.pop("model"), tokenizer, args.output_dir)
    accelerator.end_training()
    result.pop("model", None)
    return {**result, "output_dir": args.output_dir}


def load_or_train_tokenizer(accelerator, model_args, corpus, output_dir: str, reuse: bool = True):
    """The given tokenizer, else the one this run already trained (a relaunch; ``reuse``), else a new one trained
    on the train split (main process first, then the others load it)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    source = model_args.tokenizer_name_or_path
    model_path = model_args.model_name_or_path
    if source is None and model_path and (not os.path.isdir(model_path) or _has_tokenizer(model_path)):
        source = model_path  # a local model folder with a tokenizer, or a Hub repo
    if source is not None:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=model_args.trust_remote_code)
    with accelerator.main_process_first():
        if reuse and _has_tokenizer(output_dir):  # not AutoTokenizer: a finished folder's auto_map would prompt y/N
            logger.info("using the tokenizer this run trained earlier, in %s", output_dir)
            return PreTrainedTokenizerFast.from_pretrained(output_dir)
        tokenizer = _train_tokenizer(model_args, corpus["train"])
        from .export import save_tokenizer

        save_tokenizer(tokenizer, output_dir)
        return tokenizer


def _has_tokenizer(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "tokenizer.json"))


def _train_tokenizer(model_args, train):
    from datasets import Dataset

    from ..data.packing import iter_texts
    from ..tokenization import train_tokenizer

    texts = iter_texts(train) if isinstance(train, Dataset) else \
        (row["text"] for row in train.take(model_args.tokenizer_train_documents))
    logger.info("training a %s tokenizer with vocab_size=%d on the train split", model_args.family,
                model_args.vocab_size)
    return train_tokenizer(texts=texts, vocab_size=model_args.vocab_size, family=model_args.family,
                           model_max_length=model_args.block_size, show_progress=False)


def build_config(model_args, tokenizer):
    """The model config: a saved model's, else preset + ``model_config`` + the tokenizer's size and special ids.
    Raises ValueError when the tokenizer does not fit the model."""
    from transformers import AutoConfig

    import modeling_minigpt

    config_cls = getattr(modeling_minigpt, FAMILIES[model_args.family][0])
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path,
                                            trust_remote_code=model_args.trust_remote_code)
    else:
        unknown = sorted(set(model_args.model_config or {}) - set(config_cls().to_dict()))
        if unknown:  # a typo (num_hidden_layer) would otherwise ride along in config.json, unused
            raise ValueError(f"model_config: {config_cls.__name__} has no field {', '.join(map(repr, unknown))}")
        fields = {**_special_ids(tokenizer, model_args.family), "vocab_size": len(tokenizer),
                  "max_position_embeddings": model_args.block_size, **(model_args.model_config or {})}
        if model_args.model_preset and not hasattr(config_cls, "from_preset"):
            raise ValueError(f"model_preset is available for family 'gpt' only; give {model_args.family} "
                             "fields in model_config")
        config = config_cls.from_preset(model_args.model_preset, **fields) if model_args.model_preset \
            else config_cls(**fields)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size={config.vocab_size}: "
                         "raise vocab_size in model_config or use a smaller tokenizer")
    if config.position_embedding_type == "learned" and config.max_position_embeddings < model_args.block_size:
        raise ValueError(f"block_size={model_args.block_size} exceeds the model's max_position_embeddings="
                         f"{config.max_position_embeddings}")
    if model_args.attn_implementation:
        config._attn_implementation = model_args.attn_implementation
    return config


def _special_ids(tokenizer, family: str) -> dict:
    ids = {"pad_token_id": tokenizer.pad_token_id}
    if family == "gpt":
        ids.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    elif family == "t5":
        ids.update(eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return ids


def build_model(model_args, config, args):
    import modeling_minigpt

    model_cls = getattr(modeling_minigpt, FAMILIES[model_args.family][1])
    if model_args.model_name_or_path:
        model = model_cls.from_pretrained(model_args.model_name_or_path, config=config)
    else:
        model = model_cls(config)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    logger.info("%s: %.2fM parameters", model_cls.__name__, sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def sample_lengths(model_args, data_args) -> tuple[int, int | None]:
    """(raw tokens per packed sample, target length): T5's span corruption packs longer raw blocks so that the
    corrupted inputs fill ``block_size`` exactly."""
    if model_args.family != "t5":
        return model_args.block_size, None
    from ..data.collators import compute_input_and_target_lengths

    return compute_input_and_target_lengths(model_args.block_size, data_args.noise_density,
                                            data_args.mean_noise_span_length)


def build_objective(model_args, config, packed, packed_length: int, target_length: int | None) -> Objective:
    from ..planning import flops_per_token

    stats = packed.stats.get("validation")
    per_byte = stats["tokens"] / stats["bytes"] if stats and stats["bytes"] else None
    flops = flops_per_token(config, model_args.block_size)
    if target_length:  # planning counts an encoder-decoder token as one input + one target token; we count raw ones
        flops *= (model_args.block_size + target_length) / (2 * packed_length)
    return Objective(FAMILIES[model_args.family][2], packed_length, per_byte, flops)


def build_collator(model_args, data_args, tokenizer, target_length, seed: int):
    """Causal: the blocks as they are. Masked LM and span corruption: masks seeded by each batch's content, so a
    resumed run masks exactly as an uninterrupted one (``ContentSeededCollator``)."""
    if model_args.family == "gpt":
        return causal_collator
    from ..data.collators import ContentSeededCollator, DataCollatorForSpanCorruption, DataCollatorForWholeWordMask

    if model_args.family == "bert":
        from transformers import DataCollatorForLanguageModeling

        cls = DataCollatorForWholeWordMask if data_args.whole_word_mask else DataCollatorForLanguageModeling
        return ContentSeededCollator(cls(tokenizer, mlm=True, mlm_probability=data_args.mlm_probability), seed)
    return ContentSeededCollator(DataCollatorForSpanCorruption.from_tokenizer(
        tokenizer, noise_density=data_args.noise_density, mean_noise_span_length=data_args.mean_noise_span_length,
        input_length=model_args.block_size, target_length=target_length), seed)


def causal_collator(rows):
    """Packed blocks are equal-length and unpadded, so a causal batch is the blocks as inputs and labels (the
    model shifts labels); transformers' collator would also mask the pad id, which packed data never holds."""
    import torch

    ids = torch.stack([torch.as_tensor(row["input_ids"]) for row in rows])  # (B, T)
    return {"input_ids": ids, "labels": ids.clone()}


def finish(accelerator, model, tokenizer, output_dir: str) -> None:
    """The Hub-ready folder and the loss plot."""
    from .export import save_hub_folder
    from .metrics import plot_loss

    save_hub_folder(accelerator, model, tokenizer, output_dir)
    if accelerator.is_main_process:
        plot_loss(os.path.join(output_dir, "metrics.jsonl"), os.path.join(output_dir, "loss.png"),
                  title=os.path.basename(os.path.normpath(output_dir)))
        logger.info("saved the Hub-ready model, tokenizer, metrics.jsonl and loss.png in %s", output_dir)


def check_output_dir(output_dir: str, model_args, data_args, args) -> bool:
    """``output_dir`` is new, or holds this same run (a relaunch resumes it): the ``RUN_IDENTITY`` arguments in its
    run.json match. A folder with training progress (a checkpoint or a model) from another run, or from no recorded
    one, is an error before anything is written. Without progress (an earlier launch that failed before training),
    the run starts over, tokenizer included: returns True."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir={output_dir!r} is a file")
    if not os.path.isdir(output_dir):
        return False
    names = os.listdir(output_dir)
    progress = sorted(n for n in names if n.startswith("checkpoint-") or n == "model.safetensors")
    path = os.path.join(output_dir, "run.json")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                stored = json.load(f)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} is not readable JSON ({err}): is output_dir another program's folder?") from None
        current = {"model_args": model_args, "data_args": data_args, "training_args": args}
        changed = []
        for group, keys in RUN_IDENTITY.items():
            for key in keys:
                if key not in stored.get(group, {}):  # a field added since that run was launched
                    continue
                then, now = _comparable(key, stored[group][key]), _comparable(key, getattr(current[group], key))
                if then != now:
                    changed.append(f"{key}={then!r} there, {now!r} now")
        if changed and progress:
            raise ValueError(f"output_dir={output_dir!r} holds another run ({'; '.join(changed)}); a relaunch "
                             "resumes the run in its output_dir: give a new output_dir, or delete that one")
        if changed:
            logger.warning("output_dir %s holds an earlier launch that never trained (%s): starting over",
                           output_dir, "; ".join(changed))
        return bool(changed)
    if progress:
        raise ValueError(f"output_dir={output_dir!r} holds {', '.join(progress)} but no run.json, so no record of "
                         "the run they came from: delete them or give a new output_dir")
    return "tokenizer.json" in names  # a tokenizer of no recorded run: train a new one


def _comparable(key: str, value):
    """JSON round trip (run.json stores them so); data files as absolute paths."""
    value = json.loads(json.dumps(value, default=str))
    if key == "data_files" and value:
        return [os.path.abspath(p) for p in value]
    return value


def write_run_info(accelerator, output_dir, model_args, data_args, args, stats, keep_existing=False) -> None:
    """``run.json``: every argument, the data stats and how the run was launched (read by the model card).
    ``keep_existing``: write only when there is none yet (the run's first launch claims the folder)."""
    import accelerate
    import torch
    import transformers

    path = os.path.join(output_dir, "run.json")
    if keep_existing and os.path.isfile(path):
        return
    info = {"model_args": _dict(model_args), "data_args": _dict(data_args), "training_args": _dict(args),
            "data_stats": stats, "world_size": accelerator.num_processes,
            "distributed_type": accelerator.distributed_type.value, "mixed_precision": accelerator.mixed_precision,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "accelerate": accelerate.__version__}}
    os.makedirs(output_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:  # others read it at their start: never a half-written file
        json.dump(info, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


def _dict(obj) -> dict:
    return asdict(obj) if is_dataclass(obj) else dict(vars(obj))


def _scalars(args) -> dict:
    return {k: v for k, v in _dict(args).items() if isinstance(v, (int, float, str, bool))}
