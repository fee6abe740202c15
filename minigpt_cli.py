"""The `minigpt` console script.

It lives outside the package on purpose: importing `modeling_minigpt` registers the Auto classes, which
imports torch and transformers (about 6 s on a laptop CPU). Here `minigpt --help` only lists the commands;
each command's module is imported when that command runs. A command module exposes
``add_arguments(parser)`` and ``run(args) -> int | None``.
"""

import argparse
import importlib
import os
import sys

COMMANDS = {
    # name: (module, one-line help)
    "train-tokenizer": ("modeling_minigpt.tokenization", "train a byte-level BPE tokenizer (gpt | bert | t5 presets)"),
    "generate": ("modeling_minigpt.inference", "stream a continuation of --prompt from a saved model"),
    "chat": ("modeling_minigpt.inference", "interactive ChatML chat with a saved model"),
    "clean": ("modeling_minigpt.data.cleaning", "apply C4's cleaning rules and deduplicate a corpus"),
    "plan": ("modeling_minigpt.planning", "Chinchilla compute-optimal model and data size"),
    "card": ("modeling_minigpt.hub", "render a saved folder's model card from its config and metrics"),
    "push": ("modeling_minigpt.hub", "render the card and upload a saved folder to the Hugging Face Hub"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: minigpt COMMAND [options]   (minigpt COMMAND --help for a command's options)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
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
    module_name, help_ = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"minigpt {name}", description=help_)
    module = importlib.import_module(module_name)
    if _takes_name(module):
        module.add_arguments(parser, name)
    else:
        module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    args.command = name
    try:
        return module.run(args) or 0
    except (ValueError, OSError) as err:  # user mistakes: a clear message, no traceback
        if os.environ.get("MINIGPT_DEBUG"):
            raise
        print(f"minigpt {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _takes_name(module) -> bool:
    """Modules that serve several commands (generate and chat) take the command name as a second argument."""
    return module.add_arguments.__code__.co_argcount >= 2


if __name__ == "__main__":
    sys.exit(main())
