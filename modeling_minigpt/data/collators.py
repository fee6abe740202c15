"""Collators for pretraining (never shipped to the Hub). Masked LM uses transformers'
``DataCollatorForLanguageModeling`` as it is; what it lacks lives here."""

from dataclasses import dataclass

from transformers import DataCollatorForLanguageModeling


@dataclass
class DataCollatorForWholeWordMask(DataCollatorForLanguageModeling):
    """Masked LM that masks whole words: each word is picked with ``mlm_probability``, then every token of a
    picked word gets BERT's 80/10/10 treatment ([MASK] / random token / unchanged).

    transformers' ``whole_word_mask=True`` finds words from offset gaps, which byte-level BPE does not leave (a
    token's offsets include its leading space), needs ``offset_mapping`` columns that packing drops, and turns
    off the 10% random replacement; this class reads word starts from the vocabulary instead, so it also works
    on packed blocks. A token starts a word when it follows a special token or a token ending in whitespace,
    when its text starts with whitespace (byte-level BPE's ``Ġ``, SentencePiece's ``▁``), or, for WordPiece,
    when it does not start with the continuation prefix (``##``). Special tokens are never masked.
    """

    def __post_init__(self):
        super().__post_init__()
        if not self.mlm or self.return_tensors != "pt":
            raise ValueError(f"DataCollatorForWholeWordMask needs mlm=True and return_tensors='pt', got "
                             f"mlm={self.mlm!r}, return_tensors={self.return_tensors!r}")
        self._starts, self._ends = self._word_boundary_tables(self.tokenizer)

    @staticmethod
    def _word_boundary_tables(tokenizer):
        """Per token id: does it start a word / end in whitespace. Built once from the vocabulary."""
        import torch

        model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
        prefix = getattr(model, "continuing_subword_prefix", None) if type(model).__name__ == "WordPiece" else None
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        starts, ends = [], []
        for token in tokens:
            token = token or ""
            text = tokenizer.convert_tokens_to_string([token]) if token is not None else ""
            starts.append(not token.startswith(prefix) if prefix else text[:1].isspace())
            ends.append(text[-1:].isspace())
        return torch.tensor(starts), torch.tensor(ends)

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        import torch

        labels = inputs.clone()
        if special_tokens_mask is None:
            special_tokens_mask = [self.tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                                   for row in labels.tolist()]
        special = torch.as_tensor(special_tokens_mask, dtype=torch.bool)
        ids = inputs.clamp(0, len(self._starts) - 1)
        after = torch.ones_like(special)  # (B, T): the previous token is special or ends in whitespace
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
