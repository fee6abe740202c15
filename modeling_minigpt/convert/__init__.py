"""Conversion between minigpt models and transformers' reference models (never shipped to the Hub).

``convert_from_hf(model)`` takes a transformers GPT-2, Llama, BERT or T5 model and returns the matching
minigpt model with the same weights; ``convert_to_hf(model)`` goes back where the shapes allow it. Each
family's mapping lives in its own module (gpt.py, bert.py, t5.py) exposing ``from_hf`` and ``to_hf``.
"""

import importlib

# model_type -> family module
_FAMILY = {
    "gpt2": "gpt", "llama": "gpt", "minigpt": "gpt",
    "bert": "bert", "minibert": "bert",
    "t5": "t5", "minit5": "t5",
}


def _family(model):
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _FAMILY:
        raise ValueError(f"cannot convert a model of type {model_type!r}; supported: {', '.join(sorted(_FAMILY))}")
    return importlib.import_module(f"{__name__}.{_FAMILY[model_type]}")


def convert_from_hf(model):
    """transformers GPT2LMHeadModel / LlamaForCausalLM / Bert* / T5ForConditionalGeneration -> minigpt model."""
    return _family(model).from_hf(model)


def convert_to_hf(model):
    """minigpt model -> the equivalent transformers model (GPT-2, Llama, BERT or T5 shapes)."""
    return _family(model).to_hf(model)


__all__ = ["convert_from_hf", "convert_to_hf"]
