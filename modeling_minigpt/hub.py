"""Model cards and Hub publishing (tooling, never shipped).

``render_model_card`` fills ``hub_cards/model_card.md`` from what a run left in its folder: config.json,
metrics.jsonl and loss.png, so the card states the run's real numbers. ``push_to_hub`` uploads a folder with
``huggingface_hub.HfApi``; it is the only place in minigpt that talks to the network, and only when called.
"""

import json
import os
from pathlib import Path

CARDS = Path(__file__).resolve().parent.parent / "hub_cards"
FAMILIES = {
    # model_type: (title, summary, Auto class, modeling file, pipeline tag)
    "minigpt": ("GPT (decoder-only)", "a causal language model.", "AutoModelForCausalLM",
                "modeling_minigpt_gpt.py", "text-generation"),
    "minibert": ("BERT (encoder-only)", "a masked language model.", "AutoModelForMaskedLM",
                 "modeling_minigpt_bert.py", "fill-mask"),
    "minit5": ("T5 (encoder-decoder)", "a text-to-text model pretrained with span corruption.",
               "AutoModelForSeq2SeqLM", "modeling_minigpt_t5.py", "text2text-generation"),
}
ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "num_decoder_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size", "vocab_size", "max_position_embeddings",
               "position_embedding_type", "norm_type", "norm_position", "hidden_act", "mlp_gated",
               "tie_word_embeddings")


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no {what}; is this a saved minigpt folder?") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def final_metrics(folder: Path) -> dict:
    """The last value of each metric in metrics.jsonl (empty when the folder has none)."""
    path, last = folder / "metrics.jsonl", {}
    if not path.exists():
        return last
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number}: not a JSON object") from None
        last.update({k: v for k, v in row.items() if v is not None})
    return last


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _num_parameters(folder: Path) -> str:
    """Counted from the safetensors headers, without loading the weights."""
    from safetensors import safe_open

    total = 0
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            for key in f.keys():
                count = 1
                for n in f.get_slice(key).get_shape():
                    count *= n
                total += count
    return f"{total:,}" if total else "unknown"


def render_model_card(folder, repo_id=None, stage="pretraining", base_model=None, datasets=None,
                      license="apache-2.0", template=None):
    """Render the card for ``folder`` and write ``folder/README.md``; returns the ModelCard."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    config = _read_json(folder / "config.json", "config.json")
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"{folder / 'config.json'}: model_type={model_type!r} is not a minigpt family "
                         f"({', '.join(FAMILIES)})")
    title, summary, auto_class, modeling_file, pipeline_tag = FAMILIES[model_type]
    metrics = final_metrics(folder)
    shown = [(k, _fmt(metrics[k])) for k in ("step", "tokens", "loss", "eval_loss", "eval_perplexity",
                                             "eval_bits_per_byte") if k in metrics]
    repo_id = repo_id or folder.name
    data = ModelCardData(library_name="transformers", license=license, pipeline_tag=pipeline_tag,
                         tags=["minigpt", model_type, "custom_code"], base_model=base_model, datasets=datasets,
                         model_name=repo_id)
    card = ModelCard.from_template(
        data, template_path=str(template or CARDS / "model_card.md"), model_name=repo_id, repo_id=repo_id,
        family_title=title, family_summary=summary, auto_class=auto_class, modeling_file=modeling_file,
        stage=stage, base_model=base_model, metrics=shown, num_parameters=_num_parameters(folder),
        architecture=[(k, config[k]) for k in ARCH_FIELDS if k in config],
        loss_plot="loss.png" if (folder / "loss.png").exists() else None,
    )
    tmp = folder / "README.md.tmp"
    tmp.write_text(str(card))
    os.replace(tmp, folder / "README.md")
    return card


def push_to_hub(folder, repo_id, private=False, token=None, commit_message="Upload minigpt model"):
    """Create ``repo_id`` if needed and upload ``folder`` (rendering its card first when it has none)."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no config.json; push a folder written by save_pretrained")
    if not (folder / "README.md").exists():
        render_model_card(folder, repo_id=repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    ignore = ["checkpoint-*/**", ".tmp*", "*.tmp", "runs/**"]
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message,
                             ignore_patterns=ignore)


def run(args):
    if args.command == "card":
        render_model_card(args.folder, args.repo_id, args.stage, args.base_model, args.dataset)
        print(f"wrote {Path(args.folder) / 'README.md'}")
        return 0
    if not args.repo_id:
        raise ValueError("--repo-id is required to push")
    render_model_card(args.folder, args.repo_id, args.stage, args.base_model, args.dataset)
    push_to_hub(args.folder, args.repo_id, private=args.private)
    print(f"pushed {args.folder} to {args.repo_id}")
    return 0
