"""The `minigpt` console script: every command's flags, and the dispatch to the module that does the work.

It lives outside the package on purpose: importing `modeling_minigpt` registers the Auto classes, which
imports torch and transformers (5-10 s on a laptop CPU). So the flags of every command are declared here, and
`minigpt --help` and `minigpt COMMAND --help` answer without that import. A command's module is imported only
once its arguments parse; it exposes ``run(args) -> int | None``.
"""

import argparse
import importlib
import math
import os
import sys

FAMILIES = ("gpt", "bert", "t5")  # modeling_minigpt.tokenization.FAMILIES (a test keeps them equal)
FITS = ("chinchilla", "approach3", "epoch")  # modeling_minigpt.planning.FITS (likewise)
_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def _number(text: str) -> float:
    """5.76e23, 70B, 1.4T, 124M (k, M, B/G, T suffixes)."""
    scale = _SUFFIXES.get(text[-1:].lower(), 1.0)
    try:
        value = float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (examples: 5.76e23, 70B, 1.4T)") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive finite number")
    return value


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return value
    return parse


def _train_tokenizer_args(parser, name):
    parser.add_argument("--input", nargs="+", required=True, metavar="FILE", help="plain-text (UTF-8) training files")
    parser.add_argument("--vocab-size", type=_count(1), required=True, help="vocabulary size including special tokens")
    parser.add_argument("--family", choices=FAMILIES, default="gpt", help="special-token preset (default: gpt)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the saved tokenizer")
    parser.add_argument("--min-frequency", type=_count(0), default=2,
                        help="minimum pair count for a merge (default: 2)")
    parser.add_argument("--model-max-length", type=_count(1), default=1024, help="default: 1024")
    parser.add_argument("--padding-side", choices=("left", "right"), default="right", help="default: right")


def _generate_args(parser, name):
    parser.add_argument("model", metavar="MODEL_DIR", help="a saved model folder (config.json, weights, tokenizer)")
    if name == "generate":
        parser.add_argument("--prompt", required=True, help="text to continue")
    else:
        parser.add_argument("--system", default=None, help="an optional system message")
    parser.add_argument("--max-new-tokens", type=int, default=100 if name == "generate" else 200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50, help="0 turns top-k off")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps, ... (default: cuda when available)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the Python code that a non-minigpt folder ships (minigpt folders need none)")


def _clean_args(parser, name):
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help=".txt, .jsonl/.json, .parquet files or folders of them")
    parser.add_argument("--output", required=True, metavar="DIR", help="writes DIR/cleaned.jsonl and DIR/stats.json")
    parser.add_argument("--min-sentences", type=int, default=3,
                        help="drop pages with fewer sentences (C4: 5 in the paper, 3 in TFDS's code)")
    parser.add_argument("--min-words", type=int, default=3,
                        help="drop lines with fewer words (C4: 3 in the paper, 5 in TFDS's code)")
    parser.add_argument("--bad-words", metavar="FILE", default=None,
                        help="bad-words list, one a line (default: a short shipped list; C4 used LDNOOBW 'en')")
    parser.add_argument("--text-field", default="text", help="column holding the text in .jsonl/.parquet inputs")
    parser.add_argument("--doc-separator", default=None, metavar="STRING",
                        help=r"split .txt files into documents at STRING (\n and \t are unescaped, e.g. '\n\n\n'); "
                             "default: one document per .txt file")
    parser.add_argument("--unwrap", action="store_true",
                        help="join hard-wrapped lines within each blank-line-separated paragraph first (books)")
    parser.add_argument("--no-dedup", action="store_true", help="skip exact and 3-sentence-span deduplication")


def _plan_args(parser, name):
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", type=_number, help="training compute C in FLOPs, e.g. 5.76e23")
    budget.add_argument("--params", type=_number, help="model size N, e.g. 124M: gives the optimal tokens")
    budget.add_argument("--tokens", type=_number, help="training tokens D, e.g. 10B: gives the optimal size")
    budget.add_argument("--gpu-hours", type=_number, help="GPU hours on --gpu at --mfu")
    parser.add_argument("--gpu", help="GPU for --gpu-hours: h100, h100-pcie, h200, b200, a100, a10, l40s, l4, ...")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization for --gpu-hours (default 0.4)")
    parser.add_argument("--fit", choices=FITS, default="chinchilla",
                        help="scaling fit; default chinchilla reproduces the paper's 70B / 1.4T at 5.76e23")
    parser.add_argument("--vocab-size", type=int, default=50257, help="vocabulary of the suggested config")
    parser.add_argument("--seq-len", type=int, default=2048, help="context length of the suggested config")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def _hub_args(parser, name):
    parser.add_argument("folder", help="a saved minigpt folder (config.json, safetensors, tokenizer)")
    parser.add_argument("--repo-id", help="owner/name on the Hub (card title; required for push)")
    parser.add_argument("--stage", default="pretraining", help="what produced the folder, for the card")
    parser.add_argument("--base-model", help="the model this one was fine-tuned from (card lineage)")
    parser.add_argument("--dataset", action="append", help="dataset name(s) for the card metadata")
    if name == "push":
        parser.add_argument("--private", action="store_true")


COMMANDS = {
    # name: (module that runs it, its flags, one-line help)
    "train-tokenizer": ("modeling_minigpt.tokenization", _train_tokenizer_args,
                        "train a byte-level BPE tokenizer (gpt | bert | t5 presets)"),
    "generate": ("modeling_minigpt.inference", _generate_args, "stream a continuation of --prompt from a saved model"),
    "chat": ("modeling_minigpt.inference", _generate_args, "interactive ChatML chat with a saved model"),
    "clean": ("modeling_minigpt.data.cleaning", _clean_args, "apply C4's cleaning rules and deduplicate a corpus"),
    "plan": ("modeling_minigpt.planning", _plan_args, "Chinchilla compute-optimal model and data size"),
    "card": ("modeling_minigpt.hub", _hub_args, "render a saved folder's model card from its config and metrics"),
    "push": ("modeling_minigpt.hub", _hub_args, "render the card and upload a saved folder to the Hugging Face Hub"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: minigpt COMMAND [options]   (minigpt COMMAND --help for a command's options)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print("minigpt 0.1.0")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"minigpt: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, add_arguments, help_ = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"minigpt {name}", description=help_)
    add_arguments(parser, name)
    args = parser.parse_args(argv[1:])
    args.command = name
    try:
        return importlib.import_module(module_name).run(args) or 0
    except (ValueError, OSError) as err:  # user mistakes: a clear message, no traceback
        if os.environ.get("MINIGPT_DEBUG"):
            raise
        print(f"minigpt {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
