"""Collators for pretraining (never shipped to the Hub). Masked LM uses transformers'
``DataCollatorForLanguageModeling`` as it is; what it lacks lives here."""

import random
from dataclasses import dataclass

from transformers import DataCollatorForLanguageModeling


@dataclass
class DataCollatorForWholeWordMask(DataCollatorForLanguageModeling):
    """Masked LM that masks whole words: each word is picked with ``mlm_probability``, then every token of a
    picked word gets BERT's 80/10/10 treatment ([MASK] / random token / unchanged).

    transformers' ``whole_word_mask=True`` finds words from offset gaps, which byte-level BPE does not leave (a
    token's offsets include its leading space), needs ``offset_mapping`` columns that packing drops, and turns
    off the 10% random replacement; this class reads word starts from the vocabulary instead, so it also works
    on packed blocks. A token starts a word when it follows a special token or a token ending in a line break or
    tab (a single space joins the next word in byte-level BPE), when its text starts with whitespace (byte-level
    BPE's ``Ġ``, SentencePiece's ``▁``), or, for WordPiece, when it does not start with the continuation prefix
    (``##``). Special tokens are never masked.
    """

    def __post_init__(self):
        super().__post_init__()
        if not self.mlm or self.return_tensors != "pt":
            raise ValueError(f"DataCollatorForWholeWordMask needs mlm=True and return_tensors='pt', got "
                             f"mlm={self.mlm!r}, return_tensors={self.return_tensors!r}")
        self._starts, self._ends = self._word_boundary_tables(self.tokenizer)

    @staticmethod
    def _word_boundary_tables(tokenizer):
        """Per token id: does it start a word / end in whitespace other than a space. Built once from the vocabulary."""
        import torch

        model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
        prefix = getattr(model, "continuing_subword_prefix", None) if type(model).__name__ == "WordPiece" else None
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        starts, ends = [], []
        for token in tokens:
            token = token or ""
            text = tokenizer.convert_tokens_to_string([token]) if token is not None else ""
            starts.append(not token.startswith(prefix) if prefix else text[:1].isspace())
            ends.append(text[-1:].isspace() and text[-1:] != " ")
        return torch.tensor(starts), torch.tensor(ends)

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        import torch

        labels = inputs.clone()
        if special_tokens_mask is None:
            special_tokens_mask = [self.tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                                   for row in labels.tolist()]
        special = torch.as_tensor(special_tokens_mask, dtype=torch.bool)
        ids = inputs.clamp(0, len(self._starts) - 1)
        after = torch.ones_like(special)  # (B, T): the previous token is special or ends in a line break
        after[:, 1:] = special[:, :-1] | self._ends[ids[:, :-1]]
        starts = ~special & (self._starts[ids] | after)
        picked = torch.bernoulli(torch.where(starts, self.mlm_probability, 0.0), generator=self.generator).bool()
        # each token takes the decision of its word's first token: index of the last start at or before it
        positions = torch.arange(inputs.shape[1]).expand_as(inputs)
        first = torch.where(starts, positions, 0).cummax(dim=1).values
        masked = picked.gather(1, first) & ~special
        labels[~masked] = -100
        replaced = torch.bernoulli(torch.full(labels.shape, self.mask_replace_prob), generator=self.generator).bool()
        replaced &= masked
        inputs[replaced] = self.tokenizer.mask_token_id
        rest = 1 - self.mask_replace_prob
        if rest > 0 and self.random_replace_prob > 0:
            random = torch.bernoulli(torch.full(labels.shape, self.random_replace_prob / rest),
                                     generator=self.generator).bool() & masked & ~replaced
            words = torch.randint(len(self.tokenizer), labels.shape, dtype=torch.long, generator=self.generator)
            inputs[random] = words[random]
        return inputs, labels


def compute_input_and_target_lengths(inputs_length: int, noise_density: float = 0.15,
                                     mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """Port of T5's helper: the raw block length whose span corruption gives ``inputs_length`` encoder tokens,
    and the matching target length. Pack raw text into blocks of the first number for fixed-length batches."""

    def lengths(tokens_length):
        noise = int(round(tokens_length * noise_density))
        spans = int(round(noise / mean_noise_span_length))
        # inputs keep the non-noise tokens, one sentinel per span and </s>; targets the reverse
        return tokens_length - noise + spans + 1, noise + spans + 1

    tokens_length = inputs_length
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:  # T5's tweak to make both lengths equal
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


@dataclass
class DataCollatorForSpanCorruption:
    """T5 span corruption (Raffel et al. 2020, section 3.1.4) with sentinel tokens.

    transformers ships this only as a Flax example script, so this is a torch port of T5's ``random_spans_noise_mask``.
    Each example's ``input_ids`` (a list or 1-D tensor, without </s>; a trailing ``eos_token_id`` is removed first
    and never masked) is split into alternating kept/noise spans, about ``noise_density`` of the tokens in spans
    of mean length ``mean_noise_span_length``, always starting with a kept span. Span ``k`` is replaced by the
    sentinel ``sentinel_start_id + k * sentinel_step``::

        tokens   a b c d e f g h          inputs  a <s0> d e <s1> h </s>
        noise        ^       ^ ^           labels  <s0> b c <s1> f g </s>

    Every token appears exactly once across inputs and labels. ``sentinel_step`` is +1 for minigpt's t5 tokenizer
    (``<extra_id_0..99>`` consecutive) and -1 for Google's T5 vocabulary (``<extra_id_0>`` is the last id); use
    ``from_tokenizer`` to read both from a tokenizer. Batches are padded to the longest example (``input_ids``
    with ``pad_token_id``, ``labels`` with -100), or to ``input_length``/``target_length`` when given: blocks of
    ``compute_input_and_target_lengths(input_length, ...)[0]`` raw tokens then fill them exactly (T5's setup).
    ``seed`` makes the masks reproducible; None uses Python's global ``random`` (seeded by ``set_seed``).
    """

    sentinel_start_id: int
    eos_token_id: int
    pad_token_id: int
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    sentinel_step: int = 1
    num_sentinels: int = 100
    input_length: int | None = None
    target_length: int | None = None
    return_decoder_attention_mask: bool = False
    seed: int | None = None

    def __post_init__(self):
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"noise_density={self.noise_density!r} must be in (0, 1)")
        if self.mean_noise_span_length < 1.0:
            raise ValueError(f"mean_noise_span_length={self.mean_noise_span_length!r} must be >= 1")
        if self.sentinel_step not in (1, -1):
            raise ValueError(f"sentinel_step={self.sentinel_step!r} must be +1 or -1")
        self._rng = random.Random(self.seed) if self.seed is not None else random  # lists: faster than torch here

    def reseed(self, seed: int) -> None:
        """Draw the next batches' spans from ``random.Random(seed)`` (see ``ContentSeededCollator``)."""
        self._rng = random.Random(seed)

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs) -> "DataCollatorForSpanCorruption":
        """Sentinel start/step, eos and pad ids from a tokenizer with ``<extra_id_0>`` and ``<extra_id_1>``."""
        first, second = (tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in (0, 1))
        if first in (None, tokenizer.unk_token_id) or second in (None, tokenizer.unk_token_id):
            raise ValueError("the tokenizer has no <extra_id_0>/<extra_id_1> sentinel tokens (train it with the "
                             "t5 preset)")
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs eos_token and pad_token for span corruption")
        return cls(sentinel_start_id=first, sentinel_step=second - first, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id, **kwargs)

    def noise_mask(self, length: int) -> list[bool]:
        """Alternating kept/noise spans, kept first: T5's ``random_spans_noise_mask``."""
        num_noise = min(max(int(round(length * self.noise_density)), 1), length - 1)
        num_spans = min(max(int(round(num_noise / self.mean_noise_span_length)), 1), num_noise, length - num_noise)
        if num_spans < 1:  # 0 or 1 token: nothing to corrupt
            return [False] * length

        def segment(num_items):  # a uniformly random split of num_items into num_spans non-empty parts
            cuts = sorted(self._rng.sample(range(1, num_items), num_spans - 1))
            return [end - start for start, end in zip([0, *cuts], [*cuts, num_items])]

        mask = []
        for kept, noise in zip(segment(length - num_noise), segment(num_noise)):
            mask += [False] * kept + [True] * noise
        return mask

    def corrupt(self, tokens: list[int]) -> tuple[list[int], list[int]]:
        """One example -> (inputs, targets), both ending with </s>."""
        if tokens and tokens[-1] == self.eos_token_id:
            tokens = tokens[:-1]
        noise = self.noise_mask(len(tokens))
        inputs, targets, span = [], [], -1
        for i, (token, is_noise) in enumerate(zip(tokens, noise)):
            if is_noise and (i == 0 or not noise[i - 1]):  # a new span: its sentinel goes to both sides
                span += 1
                if span >= self.num_sentinels:
                    raise ValueError(f"an example of {len(tokens)} tokens needs more than num_sentinels="
                                     f"{self.num_sentinels} noise spans; use shorter blocks")
                sentinel = self.sentinel_start_id + span * self.sentinel_step
                inputs.append(sentinel)
                targets.append(sentinel)
            (targets if is_noise else inputs).append(token)
        return inputs + [self.eos_token_id], targets + [self.eos_token_id]

    def _pad(self, rows, length, value, name):
        import torch

        length = max(map(len, rows)) if length is None else length
        if max(map(len, rows)) > length:
            raise ValueError(f"a corrupted example has {max(map(len, rows))} {name} tokens, more than "
                             f"{name}_length={length}: pack raw blocks of compute_input_and_target_lengths(...)[0]")
        out = torch.full((len(rows), length), value, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def __call__(self, examples):
        pairs = [self.corrupt([int(t) for t in example["input_ids"]]) for example in examples]
        input_ids = self._pad([p[0] for p in pairs], self.input_length, self.pad_token_id, "input")
        labels = self._pad([p[1] for p in pairs], self.target_length, -100, "target")
        batch = {"input_ids": input_ids, "attention_mask": self._pad([[1] * len(p[0]) for p in pairs],
                                                                      self.input_length, 0, "input"),
                 "labels": labels}
        if self.return_decoder_attention_mask:
            batch["decoder_attention_mask"] = (labels != -100).long()
        return batch


class ContentSeededCollator:
    """A masking collator (masked LM, span corruption) whose random choices for a batch come from a generator
    seeded by (``seed``, the batch's token ids) instead of the global RNG.

    accelerate's DataLoader collates one batch ahead of the training step, so the global RNG state that a
    checkpoint saves is a batch further on, and a resumed run would mask every later batch differently. Seeded by
    content, batch k is masked the same in a resumed run as in an uninterrupted one, and every evaluation masks
    its batches the same way (eval losses compare). Batches are reshuffled each epoch, so a block still meets new
    masks. Wraps transformers' collators (their ``generator``) and ``DataCollatorForSpanCorruption`` (``reseed``).
    """

    def __init__(self, collator, seed: int):
        self.collator, self.seed = collator, seed

    def __call__(self, rows):
        import hashlib

        import numpy as np
        import torch

        ids = np.concatenate([np.asarray(row["input_ids"], dtype=np.int64).ravel() for row in rows])
        digest = hashlib.blake2b(ids.tobytes(), digest_size=8, key=str(self.seed).encode()).digest()
        seed = int.from_bytes(digest, "little") >> 1  # 63 bits: torch's manual_seed takes no more
        if hasattr(self.collator, "reseed"):
            self.collator.reseed(seed)
        else:
            self.collator.generator = torch.Generator().manual_seed(seed)
        return self.collator(rows)
