"""Pretrain a minigpt model with accelerate: causal LM (gpt), masked LM (bert) or span corruption (t5).

# Tiny GPT on Tiny Shakespeare, 2 CPU cores, a few minutes (the tokenizer is trained as part of the run)
```bash
accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/pretrain.py \
    --config recipes/configs/gpt/tiny_pretrain.yaml
```

# The same with 2-process DDP on CPU (this exact spelling: others silently run one process)
```bash
ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
    --dynamo_backend no recipes/pretrain.py --config recipes/configs/gpt/tiny_pretrain.yaml \
    --output_dir runs/tiny-gpt-ddp
```

# Tiny BERT / T5
```bash
accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/pretrain.py \
    --config recipes/configs/bert/tiny_pretrain.yaml
accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/pretrain.py \
    --config recipes/configs/t5/tiny_pretrain.yaml
```

# GPT-2 124M on FineWeb-Edu (streaming), 8 GPUs
```bash
accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/pretrain.py \
    --config recipes/configs/gpt/gpt2_124m.yaml
```

Any field can be overridden: `--max_steps 50 --output_dir runs/try --learning_rate 1e-3`. Relaunching the same
command resumes from the newest valid checkpoint in output_dir. SIGTERM or Ctrl-C saves a checkpoint at the
next step and exits with 143 (SIGTERM) or 130 (SIGINT); a user error exits with 2, a diverged run with 1.
"""

import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import check_positive, json_field, run
from common import make_parser as _make_parser


@dataclass
class ModelArguments:
    family: str = field(default="gpt", metadata={"help": "gpt (causal LM) | bert (masked LM) | t5 (span corruption)"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "continue from a saved model"})
    model_preset: str | None = field(default=None, metadata={"help": "gpt preset: tiny, tiny-llama, gpt2, ..."})
    model_config: dict | str | None = field(
        default=None, metadata={"help": "config fields (YAML mapping or JSON string), over the preset; on the "
                                          "command line it updates the YAML file's mapping"})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "a saved tokenizer; default: train one on the train split"})
    vocab_size: int = field(default=4096, metadata={"help": "size of the tokenizer trained by the run"})
    tokenizer_train_documents: int = field(default=100_000, metadata={"help": "streaming: documents to train on"})
    block_size: int = field(default=256, metadata={"help": "tokens per training sample (t5: encoder input length)"})
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa | eager | flash_attention_2"})
    trust_remote_code: bool = field(default=False, metadata={"help": "for model/tokenizer folders with custom code"})

    def __post_init__(self):
        self.model_config = json_field(self.model_config, "model_config")
        check_positive(self, "vocab_size", "block_size", "tokenizer_train_documents")


@dataclass
class DataArguments:
    data_files: list[str] | None = field(default=None, metadata={"help": ".txt/.jsonl/.parquet files or folders"})
    dataset_name: str | None = field(default=None, metadata={"help": "a Hub dataset (instead of data_files)"})
    dataset_config: str | None = field(default=None, metadata={"help": "the Hub dataset's configuration name"})
    dataset_text_field: str = field(default="text", metadata={"help": "column holding the text"})
    dataset_streaming: bool = field(default=False, metadata={"help": "stream instead of downloading"})
    validation_split_size: float = field(default=0.1, metadata={"help": "fraction held out for validation"})
    test_split_size: float = field(default=0.0, metadata={"help": "fraction held out for test"})
    split_by: str = field(default="auto", metadata={"help": "tail (last chars of each doc) | documents | auto"})
    streaming_validation_documents: int = field(default=1000, metadata={"help": "streaming: validation docs"})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "processes for tokenizing"})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "packed-data cache (default: HF cache)"})
    mlm_probability: float = field(default=0.15, metadata={"help": "bert: share of tokens masked"})
    whole_word_mask: bool = field(default=False, metadata={"help": "bert: mask whole words"})
    noise_density: float = field(default=0.15, metadata={"help": "t5: share of tokens corrupted"})
    mean_noise_span_length: float = field(default=3.0, metadata={"help": "t5: mean corrupted span length"})

    def __post_init__(self):
        if (self.data_files is None) == (self.dataset_name is None):
            raise ValueError("give exactly one of data_files or dataset_name")
        if isinstance(self.data_files, str):
            self.data_files = [self.data_files]


@dataclass
class PretrainingArguments:
    """TrainingArguments names and meanings, for the subset this loop implements."""

    output_dir: str = field(metadata={"help": "checkpoints, metrics.jsonl, loss.png and the final model"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-4
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = field(default=1.0, metadata={"help": "0 disables clipping"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "any transformers scheduler name"})
    lr_scheduler_kwargs: dict | str | None = field(default=None, metadata={"help": "e.g. {min_lr_rate: 0.1}"})
    warmup_steps: int = 100
    logging_steps: int = 10
    eval_steps: int = 100
    save_steps: int = 500
    save_total_limit: int | None = field(default=2, metadata={"help": "checkpoints kept (newest)"})
    seed: int = 42
    bf16: bool | None = field(default=None, metadata={"help": "default: the launch profile's mixed_precision"})
    torch_compile: bool = False
    tf32: bool = field(default=True,
                       metadata={"help": "CUDA: TF32 tensor cores for fp32 matmuls (torch's default: off)"})
    gradient_checkpointing: bool = False
    report_to: str = field(default="none", metadata={"help": "none | all | tensorboard | trackio | wandb"})
    max_nonfinite_steps: int = field(default=5, metadata={"help": "stop after this many non-finite losses in a row"})
    dataloader_num_workers: int = 0

    def __post_init__(self):
        self.lr_scheduler_kwargs = json_field(self.lr_scheduler_kwargs, "lr_scheduler_kwargs")
        check_positive(self, "max_steps", "save_steps", "eval_steps", "logging_steps", "per_device_train_batch_size",
                       "per_device_eval_batch_size", "gradient_accumulation_steps", "max_nonfinite_steps")
        if self.save_total_limit is not None:
            check_positive(self, "save_total_limit")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate!r} must be positive")
        if self.warmup_steps < 0 or self.max_grad_norm < 0 or self.dataloader_num_workers < 0:
            raise ValueError("warmup_steps, max_grad_norm and dataloader_num_workers must be >= 0")


def make_parser():
    return _make_parser(ModelArguments, DataArguments, PretrainingArguments)


def main(model_args, data_args, training_args) -> int:
    from modeling_minigpt.training.loop import TrainingDivergedError
    from modeling_minigpt.training.pretrain import pretrain

    try:
        result = pretrain(model_args, data_args, training_args)
    except TrainingDivergedError as err:
        print(f"pretrain.py: error: {err}", file=sys.stderr)
        return 1
    return 128 + result["stopped_by"] if result["stopped_by"] else 0


if __name__ == "__main__":
    sys.exit(run(main, make_parser()))
