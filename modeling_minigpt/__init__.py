"""minigpt: small GPT, BERT and T5 models on one shared block library, native to the Hugging Face ecosystem.

Importing the package registers every config and model with the Auto classes, so installed users can write
``AutoModelForCausalLM.from_pretrained(folder)``; saved folders also carry ``auto_map`` and the model code, so
users without minigpt load them with ``trust_remote_code=True``. Tooling (conversion, tokenizers, collators)
is imported lazily on first use. This file is never shipped to the Hub.
"""

import importlib

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_minigpt import MINIGPT_PRESETS, MiniBertConfig, MiniGPTConfig, MiniT5Config
from .modeling_minigpt_bert import (
    MiniBertForMaskedLM,
    MiniBertForSequenceClassification,
    MiniBertForTokenClassification,
    MiniBertModel,
    MiniBertPreTrainedModel,
)
from .modeling_minigpt_gpt import (
    MiniGPTForCausalLM,
    MiniGPTForSequenceClassification,
    MiniGPTModel,
    MiniGPTPreTrainedModel,
)
from .modeling_minigpt_t5 import MiniT5ForConditionalGeneration, MiniT5Model, MiniT5PreTrainedModel

__version__ = "0.1.0"

_REGISTRY = [
    # (config class, {Auto class: model class})
    (MiniGPTConfig, {
        AutoModel: MiniGPTModel,
        AutoModelForCausalLM: MiniGPTForCausalLM,
        AutoModelForSequenceClassification: MiniGPTForSequenceClassification,
    }),
    (MiniBertConfig, {
        AutoModel: MiniBertModel,
        AutoModelForMaskedLM: MiniBertForMaskedLM,
        AutoModelForSequenceClassification: MiniBertForSequenceClassification,
        AutoModelForTokenClassification: MiniBertForTokenClassification,
    }),
    (MiniT5Config, {AutoModel: MiniT5Model, AutoModelForSeq2SeqLM: MiniT5ForConditionalGeneration}),
]


def _register(config_cls, heads):
    AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    config_cls.register_for_auto_class()
    for auto_cls, model_cls in heads.items():
        auto_cls.register(config_cls, model_cls, exist_ok=True)
        model_cls.register_for_auto_class(auto_cls.__name__)


for _config_cls, _heads in _REGISTRY:
    _register(_config_cls, _heads)

# Tooling that never ships: loaded on first attribute access to keep `import modeling_minigpt` light.
_LAZY = {
    "convert_from_hf": "modeling_minigpt.convert",
    "convert_to_hf": "modeling_minigpt.convert",
    "train_tokenizer": "modeling_minigpt.tokenization",
    "DataCollatorForSpanCorruption": "modeling_minigpt.data.collators",
    "DataCollatorForWholeWordMask": "modeling_minigpt.data.collators",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modeling_minigpt' has no attribute {name!r}")


__all__ = [
    "MINIGPT_PRESETS", "MiniGPTConfig", "MiniBertConfig", "MiniT5Config",
    "MiniGPTPreTrainedModel", "MiniGPTModel", "MiniGPTForCausalLM", "MiniGPTForSequenceClassification",
    "MiniBertPreTrainedModel", "MiniBertModel", "MiniBertForMaskedLM", "MiniBertForSequenceClassification",
    "MiniBertForTokenClassification",
    "MiniT5PreTrainedModel", "MiniT5Model", "MiniT5ForConditionalGeneration",
    *_LAZY,
]
