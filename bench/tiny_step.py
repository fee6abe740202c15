#!/usr/bin/env python
"""Time one training step of the gpt tiny recipe's model on its own: a host-speed check for the sample-efficiency
benchmark, whose wall time moves with this VM's speed (bench/SAMPLE_EFFICIENCY.md).

One rank's share of a step of recipes/configs/gpt/tiny_pretrain.yaml (model, block, per-device batch and optimizer
read from the YAML): forward + backward + clipping + fused AdamW, one torch thread (as each of cpu.yaml's two DDP
ranks runs). Pin it to a core to compare the two vCPUs:

    python bench/tiny_step.py                 # mean step time over --steps steps, after 5 warm-up steps
    taskset -c 1 python bench/tiny_step.py --steps 60
"""

import argparse
import time
from pathlib import Path

import torch

RECIPE = "recipes/configs/gpt/tiny_pretrain.yaml"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from types import SimpleNamespace

    import yaml

    from modeling_minigpt import MiniGPTConfig, MiniGPTForCausalLM
    from modeling_minigpt.training.loop import build_optimizer

    recipe = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath(RECIPE).read_text())
    config = MiniGPTConfig.from_preset(recipe["model_preset"], **recipe["model_config"],
                                       vocab_size=recipe["vocab_size"], max_position_embeddings=recipe["block_size"])
    torch.manual_seed(0)
    model = MiniGPTForCausalLM(config)
    optimizer = build_optimizer(model, SimpleNamespace(weight_decay=recipe["weight_decay"], adam_beta1=0.9,
                                                       learning_rate=recipe["learning_rate"], adam_epsilon=1e-8,
                                                       adam_beta2=recipe["adam_beta2"]), torch.device("cpu"))
    ids = torch.randint(0, config.vocab_size, (recipe["per_device_train_batch_size"], recipe["block_size"]))

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    flops = 6 * model.num_parameters() * ids.numel()
    print(f"step {seconds * 1e3:.1f} ms  ({ids.numel() / seconds:,.0f} tokens/s on one thread, "
          f"6N: {flops / seconds / 1e9:.1f} GFLOP/s); {recipe['max_steps']} steps at this rate: "
          f"{recipe['max_steps'] * seconds:.0f} s")


if __name__ == "__main__":
    main()
