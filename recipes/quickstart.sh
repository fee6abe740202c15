#!/usr/bin/env bash
# The main job on its built-in default data: set up, pretrain a tiny Llama-style GPT on Tiny Shakespeare
# (its BPE tokenizer is trained as part of the run), then stream a sample from it. 2 CPU cores, a few minutes.
# Relaunching resumes from the newest checkpoint in runs/tiny-gpt. Extra arguments go to the recipe,
# e.g. `bash recipes/quickstart.sh --max_steps 50`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/pretrain.py \
    --config recipes/configs/gpt/tiny_pretrain.yaml "$@"
OUT=runs/tiny-gpt  # the config's output_dir, unless the arguments gave another
prev=""
for arg in "$@"; do
    case "$arg" in --output_dir=*) OUT="${arg#--output_dir=}" ;; esac
    [ "$prev" = "--output_dir" ] && OUT="$arg"
    prev="$arg"
done
echo
echo "== sample from $OUT =="
minigpt generate "$OUT" --prompt "ROMEO:" --max-new-tokens 120 --temperature 0.8 --top-k 50 --top-p 0.95 --seed 0
echo
echo "metrics: $OUT/metrics.jsonl   loss curve: $OUT/loss.png"
