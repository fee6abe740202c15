"""`minigpt generate` and `minigpt chat`: stream text from a saved causal LM folder with transformers' generate().

    minigpt generate MODEL_DIR --prompt "ROMEO:" --max-new-tokens 100 --temperature 0.8 --top-k 50 --top-p 0.95
    minigpt generate MODEL_DIR --prompt "ROMEO:" --greedy
    minigpt chat MODEL_DIR --system "You are a helpful assistant."   (one user line per turn; /exit or EOF ends)

Any folder that ``AutoModelForCausalLM`` and ``AutoTokenizer`` load works, minigpt or not. minigpt folders load
with the installed classes; a folder that ships other code runs it only with ``--trust-remote-code``.
"""

import os
import sys


def run(args):
    _check_sampling(args)
    model, tokenizer = load_model(args.model, args.device, args.trust_remote_code)
    from transformers import set_seed

    set_seed(args.seed)
    if args.command == "generate":
        return _generate(model, tokenizer, args)
    return _chat(model, tokenizer, args)


def _check_sampling(args):
    if args.max_new_tokens <= 0:
        raise ValueError(f"--max-new-tokens={args.max_new_tokens} must be positive")
    if args.temperature <= 0:
        raise ValueError(f"--temperature={args.temperature} must be positive (use --greedy for argmax decoding)")
    if args.top_k < 0:
        raise ValueError(f"--top-k={args.top_k} must be >= 0")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p={args.top_p} must be in (0, 1]")
    if args.command == "generate" and not args.prompt:
        raise ValueError("--prompt is empty: give some text to continue")


def load_model(path: str, device: str | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) from a folder, or a one-line ValueError/FileNotFoundError saying why it is not a model.

    ``import modeling_minigpt`` registers minigpt's classes, so minigpt folders need no remote code: the installed
    classes load them. Other custom models run the code in their folder only with ``trust_remote_code``."""
    if os.path.isfile(path):
        raise ValueError(f"{path!r} is a file: give the model folder that holds it")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path!r} does not exist")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path!r} is not a model folder: it has no config.json")
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"{path!r} has no tokenizer (tokenizer.json); save one beside the model")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import modeling_minigpt  # noqa: F401  registers the local classes, so they win over the folder's copied code

    device = _device(device, torch)
    remote = dict(trust_remote_code=trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(path, **remote)
    except (ValueError, KeyError, OSError) as err:
        hint = " (it ships its own code: add --trust-remote-code if you trust it)" if "trust_remote_code" in str(
            err) else ""
        raise ValueError(f"{path!r} is not a transformers model{hint}: {_first_line(err)}") from err
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ValueError(f"{path!r} holds {', '.join(archs)}, not a causal LM (a ...ForCausalLM model)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, **remote)
    except ValueError as err:
        raise ValueError(f"{path!r} ({config.model_type}) is not a causal LM: {_first_line(err)}") from err
    except Exception as err:  # a truncated safetensors file, a weight of the wrong shape, ...
        raise ValueError(f"cannot load the weights in {path!r}: {type(err).__name__}: {_first_line(err)}") from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **remote)
    except Exception as err:  # a malformed tokenizer.json raises KeyError, JSONDecodeError, Exception, ...
        raise ValueError(f"cannot load the tokenizer in {path!r}: {type(err).__name__}: {_first_line(err)}") from err
    return model.to(device).eval(), tokenizer


def _device(name: str | None, torch):
    """The torch device for --device, or a ValueError naming it (an unknown or absent device)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device={name!r} is not a device (cpu, cuda, cuda:1, mps, ...)") from None
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and not (backend is not None and hasattr(backend, "is_available")
                                     and backend.is_available()):
        raise ValueError(f"--device={name!r}: this machine has no {device.type} device (try cpu)")
    return device


def _first_line(err) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _sampling_kwargs(args, tokenizer) -> dict:
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if not args.greedy:
        kwargs.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    else:  # the model's generation_config may carry sampling defaults; greedy ignores them
        kwargs.update(temperature=None, top_k=None, top_p=None)
    return kwargs


def _max_positions(model) -> int | None:
    """The longest input the model takes: a learned position table's size. Rotary, sinusoidal and no positions
    extend past the trained length (less well), so they get no hard limit."""
    if getattr(model.config, "position_embedding_type", "learned") in ("rope", "sinusoidal", "none"):
        return None
    return getattr(model.config, "max_position_embeddings", None)


def _generate(model, tokenizer, args):
    from transformers import TextStreamer

    inputs = tokenizer(args.prompt, return_tensors="pt").to(model.device)
    n_prompt, limit = inputs["input_ids"].shape[1], _max_positions(model)
    if limit and n_prompt + args.max_new_tokens > limit:
        raise ValueError(f"the prompt ({n_prompt} tokens) plus --max-new-tokens={args.max_new_tokens} exceeds the "
                         f"model's max_position_embeddings={limit}")
    print(args.prompt, end="", flush=True)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    model.generate(**inputs, streamer=streamer, **_sampling_kwargs(args, tokenizer))  # the streamer ends the line


def _chat(model, tokenizer, args):
    from transformers import TextStreamer

    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer in {args.model!r} has no chat template; "
                         "train one with `minigpt train-tokenizer --family gpt`")
    history = [{"role": "system", "content": args.system}] if args.system else []
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")  # the unk id when the vocabulary lacks it
    stops = [i for i in (im_end if im_end != tokenizer.unk_token_id else None, tokenizer.eos_token_id)
             if i is not None]  # the eos may be the unk token too (<|endoftext|> in GPT-2 style vocabularies)
    budget = (_max_positions(model) or 10**9) - args.max_new_tokens
    if budget <= 0:
        raise ValueError(f"--max-new-tokens={args.max_new_tokens} leaves no room for the prompt in "
                         f"max_position_embeddings={_max_positions(model)}")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    interactive = sys.stdin.isatty()
    while (line := _read_line(interactive)) is not None:
        if line.strip() == "/exit":
            break
        history.append({"role": "user", "content": line})
        ids = _fit_history(tokenizer, history, budget).to(model.device)
        out = model.generate(input_ids=ids, attention_mask=ids.new_ones(ids.shape), streamer=streamer,
                             eos_token_id=stops, **_sampling_kwargs(args, tokenizer))
        reply = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        history.append({"role": "assistant", "content": reply})


def _read_line(interactive: bool) -> str | None:
    if interactive:
        print("> ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def _fit_history(tokenizer, history, budget):
    """Drop the oldest exchanges (keeping a system message) until the prompt fits; cut from the left if still long."""
    first = 1 if history[0]["role"] == "system" else 0
    while True:
        ids = tokenizer.apply_chat_template(history, add_generation_prompt=True, return_dict=True,
                                            return_tensors="pt")["input_ids"]  # (1, T)
        if ids.shape[1] <= budget or len(history) - first <= 1:
            return ids[:, -budget:]
        del history[first:first + 2]
