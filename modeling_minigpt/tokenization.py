"""Byte-level BPE tokenizers for the three families, trained with `tokenizers` and saved as plain fast tokenizers.

Byte-level BPE never meets an unknown character, so ``decode(encode(s)) == s`` for any Unicode string (there is
no normalizer). Family presets (special tokens get the first ids, in this order):

- ``gpt``: ``<|endoftext|>`` (bos, eos, unk; separates documents), ``<|im_start|>``, ``<|im_end|>`` (ChatML) and a
  dedicated ``<|pad|>``. Pad is NOT eos, so collators that mask pad labels never mask a real end of text. The chat
  template is ChatML; each assistant turn and its ``<|im_end|>`` sit in ``{% generation %}`` so TRL's
  ``assistant_only_loss=True`` trains exactly those tokens (and the model learns to stop).
- ``bert``: ``[PAD] [UNK] [CLS] [SEP] [MASK]``; ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with token types 0/1.
- ``t5``: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then ``<extra_id_0>`` .. ``<extra_id_99>`` (ids 3..102, in order, as
  ``extra_special_tokens``, v5's name for additional_special_tokens); ``</s>`` is appended to every sequence.

The saved folder (tokenizer.json, tokenizer_config.json, chat_template.jinja) needs neither minigpt nor custom code:
``AutoTokenizer.from_pretrained(folder)``. In a model's folder, pass ``trust_remote_code=True`` there too:
transformers 5 reads the model's config first, whose ``auto_map`` names custom code, and otherwise asks y/N.

Example::

    minigpt train-tokenizer --input ../shared/data/tinyshakespeare/input.txt --vocab-size 4096 --output tok
"""

import codecs
import json
import os
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

FAMILIES = ("gpt", "bert", "t5")
GPT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
T5_SPECIALS = ["<pad>", "</s>", "<unk>"] + [f"<extra_id_{i}>" for i in range(100)]

# ChatML; the assistant's content and <|im_end|> are inside {% generation %} (TRL's assistant-only loss mask).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def special_tokens(family: str) -> list[str]:
    """The family's special tokens in id order (they get ids 0..n-1)."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is unknown; choose one of {', '.join(FAMILIES)}")
    return {"gpt": GPT_SPECIALS, "bert": BERT_SPECIALS, "t5": T5_SPECIALS}[family]


def min_vocab_size(family: str) -> int:
    """The 256 byte symbols plus the family's special tokens."""
    return len(pre_tokenizers.ByteLevel.alphabet()) + len(special_tokens(family))


def train_tokenizer(
    files: list[str] | None = None,
    vocab_size: int = 8192,
    family: str = "gpt",
    output_dir: str | None = None,
    min_frequency: int = 2,
    model_max_length: int = 1024,
    show_progress: bool = True,
    texts: Iterable[str] | None = None,
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on text ``files`` (or an iterator of strings, ``texts=``).

    Returns a ``PreTrainedTokenizerFast``; with ``output_dir`` it is also saved there with ``save_pretrained``.
    """
    if (files is None) == (texts is None):
        raise ValueError("pass exactly one of files= or texts=")
    if vocab_size < min_vocab_size(family):
        raise ValueError(f"vocab_size={vocab_size} is too small for family={family!r}: it needs at least "
                         f"{min_vocab_size(family)} (256 bytes + {len(special_tokens(family))} special tokens)")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r} must be 'left' or 'right'")
    if min_frequency < 0 or model_max_length < 1:
        raise ValueError(f"min_frequency={min_frequency} must be >= 0 and model_max_length={model_max_length} >= 1")
    if output_dir is not None and os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output {output_dir!r} is a file, not a folder")
    backend = _byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=_trainer_specials(family),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress,
    )
    if files is not None:
        files = [_check_file(f) for f in files]
        try:
            backend.train(files, trainer)
        except Exception:  # the Rust trainer names no file: find the one that is not UTF-8
            for file in files:
                check_utf8(file)
            raise
    else:
        backend.train_from_iterator(texts, trainer)
    tokenizer = wrap_tokenizer(backend, family, model_max_length, padding_side)
    if output_dir is not None:
        tokenizer.save_pretrained(output_dir)
    return tokenizer


def _trainer_specials(family: str) -> list:
    # lstrip like RoBERTa's <mask>: "is [MASK]." masks a whole word with its leading space, as BPE tokens carry it
    return [AddedToken(t, lstrip=True, special=True) if t == "[MASK]" else t for t in special_tokens(family)]


def _byte_level_bpe(vocab: dict | None = None, merges: list | None = None) -> Tokenizer:
    backend = Tokenizer(models.BPE(vocab, merges) if vocab is not None else models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def _check_file(path: str) -> str:
    if os.path.isdir(path):
        raise ValueError(f"input {path!r} is a folder: give the text files in it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"input file {path!r} is empty")
    return path


def check_utf8(path: str) -> None:
    """A ValueError naming ``path`` and the byte where it stops being UTF-8 (the Rust readers name no file)."""
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        try:
            while chunk := f.read(1 << 24):
                decoder.decode(chunk)
                offset += len(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:
            raise ValueError(f"input file {path!r} is not UTF-8 text (near byte {offset + err.start}): convert it "
                             "first, e.g. iconv -f latin1 -t utf-8") from None


def wrap_tokenizer(backend: Tokenizer, family: str, model_max_length: int = 1024,
                   padding_side: str = "right") -> PreTrainedTokenizerFast:
    """Attach the family's post-processor and special-token roles; everything goes to the constructor so it
    persists through save_pretrained/from_pretrained."""
    ids = {tok: backend.token_to_id(tok) for tok in special_tokens(family)}
    common = dict(model_max_length=model_max_length, padding_side=padding_side, clean_up_tokenization_spaces=False)
    if family == "gpt":
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
            unk_token="<|endoftext|>", pad_token="<|pad|>", extra_special_tokens=["<|im_start|>", "<|im_end|>"],
            chat_template=CHATML_TEMPLATE, **common,
        )
    if family == "bert":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
            **common,
        )
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", ids["</s>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        extra_special_tokens=T5_SPECIALS[3:], **common,
    )


def load_gpt2_tokenizer(path: str = "../shared/data/gpt2_bpe", model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """The real GPT-2 tokenizer, built offline from OpenAI's ``encoder.json`` and ``vocab.bpe``."""
    encoder, merges_file = os.path.join(path, "encoder.json"), os.path.join(path, "vocab.bpe")
    for file in (encoder, merges_file):
        if not os.path.isfile(file):
            raise FileNotFoundError(f"GPT-2 BPE file {file!r} does not exist")
    with open(encoder, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_file, encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line]  # line 0 is "#version"
    backend = _byte_level_bpe(vocab, merges)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
        model_max_length=model_max_length, clean_up_tokenization_spaces=False,
    )


def run(args):
    tokenizer = train_tokenizer(
        args.input, args.vocab_size, family=args.family, output_dir=args.output, min_frequency=args.min_frequency,
        model_max_length=args.model_max_length, padding_side=args.padding_side,
    )
    short = f" (not {args.vocab_size}: the corpus offers no more merges)" if len(tokenizer) < args.vocab_size else ""
    print(f"saved a {args.family} tokenizer with {len(tokenizer)} tokens{short} to {args.output}")
