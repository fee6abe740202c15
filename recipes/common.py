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
import sys


def make_parser(*dataclass_types):
    from trl.scripts.utils import TrlParser

    return TrlParser(dataclass_types)


def parse(parser, argv=None) -> tuple:
    return parser.parse_args_and_config(argv)


def json_field(value, name: str) -> dict | None:
    """A dict from a YAML mapping (already a dict) or a JSON object string (``--model_config '{"a": 1}'``)."""
    if value is None or isinstance(value, dict):
        return value
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
