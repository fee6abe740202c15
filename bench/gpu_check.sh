#!/usr/bin/env bash
# The GPU checks, run on a CUDA machine from the repository root (the figures in bench/README.md "GPU" come from it):
#   1. the gpu-marked tests: HF parity on CUDA (fp32 and bf16), SDPA's flash kernel, cached/static/compiled
#      generation, a bf16 training step, and the single_gpu / multi_gpu / fsdp profiles end to end with resume;
#   2. GPT-2 124M pretraining throughput and MFU in bf16 through recipes/pretrain.py (single_gpu profile), eager and
#      with torch.compile, on the bundled Tiny Shakespeare with a tokenizer trained by the run (no download).
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (OUT_DIR keeps the logs and metrics; default runs/gpu-check)
#        SKIP_TESTS=1 bash bench/gpu_check.sh   (part 2 only)
set -uo pipefail
OUT_DIR="${1:-runs/gpu-check}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 - <<'EOF'
import torch, transformers, accelerate, datasets, trl
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print("transformers", transformers.__version__, "accelerate", accelerate.__version__, "datasets", datasets.__version__,
      "trl", trl.__version__)
EOF

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python3 -m pytest -p no:cacheprovider -m gpu tests/gpu -v 2>&1 | tee "$OUT_DIR/pytest-gpu.log" | grep -E "PASS|FAIL|ERROR|passed|failed|Error"
fi

# GPT-2 124M, block 1024, 16 sequences per step (16,384 tokens), bf16 autocast, SDPA (flash kernel on H100)
python3 - "$OUT_DIR" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open("recipes/configs/gpt/gpt2_124m.yaml"))
for key in ("dataset_name", "dataset_config", "dataset_streaming", "tokenizer_name_or_path", "report_to"):
    cfg.pop(key, None)
cfg.update(data_files=["recipes/data/tinyshakespeare.txt"], split_by="tail", vocab_size=8192, max_steps=120,
           gradient_accumulation_steps=1, logging_steps=20, eval_steps=120, save_steps=120, warmup_steps=10)
yaml.safe_dump(cfg, open(f"{sys.argv[1]}/gpt2_124m_local.yaml", "w"))
EOF
for compile in false true; do
  run="$OUT_DIR/gpt2-compile-$compile"
  rm -rf "$run"
  accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/pretrain.py \
    --config "$OUT_DIR/gpt2_124m_local.yaml" --output_dir "$run" --torch_compile "$compile" 2>&1 \
    | tr '\r' '\n' | grep -E "INFO|step=|Error|error" | tail -8
  python3 - "$run" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
train = [r for r in rows if r.get("loss") is not None][1:]  # the first window holds compilation / warmup
best = max(train, key=lambda r: r["tokens_per_second"])
print(sys.argv[1], "tokens/s (median of windows after the first):",
      sorted(r["tokens_per_second"] for r in train)[len(train) // 2], "best:", best["tokens_per_second"],
      "MFU:", best.get("mfu"), "final eval:", [r for r in rows if "eval_loss" in r][-1])
EOF
done
