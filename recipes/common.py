"""Helpers shared by every recipe script (pretrain, sft, dpo, ...). Light imports only: ``--help`` stays fast.

- ``make_parser(*dataclasses)``: TRL's ``TrlParser``, so ``--config x.yaml`` sets defaults and ``--field value``
  overrides them, with the same YAML layout as TRL's own scripts.
- ``run(main, parser)``: parse, set up logging (INFO on the main process, WARNING elsewhere), call
  ``main(*args)``; a user mistake (ValueError, OSError) ends with one clear line and exit code 2, no traceback.
- ``json_field(value, name)``: dict fields accept a YAML mapping or a JSON string on the command line.
"""

import json
import logging
import os
import re
import sys


def make_parser(*dataclass_types):
    import argparse

    from trl.scripts.utils import TrlParser

    parser = TrlParser(dataclass_types)
    # TrlParser reads --config itself; declared here (never stored) so that --help shows it
    parser.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                        help="YAML file of these fields (recipes/configs/...); flags given here override it")
    return parser


def parse(parser, argv=None) -> tuple:
    """The dataclasses; a broken or mistyped --config file is a ValueError that names the file."""
    import yaml

    argv = sys.argv[1:] if argv is None else list(argv)
    config = next((a.split("=", 1)[1] if "=" in a else argv[i + 1] for i, a in enumerate(argv)
                   if a.split("=", 1)[0] == "--config" and ("=" in a or i + 1 < len(argv))), None)
    try:
        parsed = parser.parse_args_and_config(argv)
    except yaml.YAMLError as err:
        raise ValueError(f"{config}: not valid YAML: {' '.join(str(err).split())}") from None
    except ValueError as err:
        if str(err).startswith("Unknown arguments from config file"):  # TrlParser's words; name the file and keys
            keys = [a[2:] for a in re.findall(r"'(--[^']+)'", str(err))]
            raise ValueError(f"{config}: unknown field(s) {', '.join(keys)} (see --help for the fields)") from None
        raise
    if config is not None:
        _merge_mappings(parsed, config, argv)
    return parsed


def _merge_mappings(parsed, config: str, argv: list[str]) -> None:
    """A mapping given on the command line (``--model_config '{"num_hidden_layers": 2}'``) updates the config
    file's mapping instead of replacing it: changing one field keeps the file's others (a tiny model stays tiny)."""
    import yaml

    with open(config) as f:
        from_file = yaml.safe_load(f) or {}
    flags = {a.split("=", 1)[0][2:] for a in argv if a.startswith("--")}
    for obj in parsed:
        for name, value in vars(obj).items():
            if name in flags and isinstance(value, dict) and isinstance(from_file.get(name), dict):
                setattr(obj, name, {**from_file[name], **value})


def json_field(value, name: str) -> dict | None:
    """A dict from a YAML mapping (already a dict) or a JSON object string (``--model_config '{"a": 1}'``)."""
    if value is None or isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r} must be a mapping (YAML) or a JSON object string")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}={value!r} is not a JSON object: {err}") from err
    if not isinstance(parsed, dict):
        raise ValueError(f"{name}={value!r} must be a JSON object (a mapping)")
    return parsed


def check_positive(obj, *names: str) -> None:
    """Raise ValueError naming the first field that is not a positive integer."""
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer")


def is_main_process() -> bool:
    """Before accelerate starts: the launcher's RANK (torchrun) tells which process this is."""
    return os.environ.get("RANK", "0") == "0"


def setup_logging() -> None:
    level = logging.INFO if is_main_process() else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level)
    for noisy in ("httpx", "urllib3", "filelock", "fsspec", "accelerate", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "Removed shared tensor {'lm_head.weight'}" at every checkpoint: tied weights, re-tied when loaded
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


def run(main, parser, argv=None) -> int:
    """Parse ``argv`` into the parser's dataclasses and call ``main`` with them; map user errors to exit code 2.

    ``MINIGPT_DEBUG=1`` shows the traceback instead.
    """
    prog = os.path.basename(sys.argv[0]) or "recipe"
    try:
        args = parse(parser, argv)
        setup_logging()
        return main(*args) or 0
    except (ValueError, OSError) as err:
        if os.environ.get("MINIGPT_DEBUG"):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
        return 130
