#!/usr/bin/env python
"""Time one training step of the gpt tiny recipe's model on its own: a host-speed check for the sample-efficiency
benchmark, whose wall time moves with this VM's speed (bench/SAMPLE_EFFICIENCY.md).

One rank's share of a tiny_pretrain.yaml step: 4 sequences x 128 tokens, forward + backward + clipping + fused
AdamW, one torch thread (as each of cpu.yaml's two DDP ranks runs). Pin it to a core to compare the two vCPUs:

    python bench/tiny_step.py                 # mean step time over --steps steps, after 5 warm-up steps
    taskset -c 1 python bench/tiny_step.py --steps 60
"""

import argparse
import time

import torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from types import SimpleNamespace

    from modeling_minigpt import MiniGPTConfig, MiniGPTForCausalLM
    from modeling_minigpt.training.loop import build_optimizer

    config = MiniGPTConfig.from_preset("tiny-llama", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=352, hidden_dropout=0.0,
                                       vocab_size=1024, max_position_embeddings=128)  # tiny_pretrain.yaml
    torch.manual_seed(0)
    model = MiniGPTForCausalLM(config)
    optimizer = build_optimizer(model, SimpleNamespace(weight_decay=0.1, learning_rate=4e-3, adam_beta1=0.9,
                                                       adam_beta2=0.99, adam_epsilon=1e-8), torch.device("cpu"))
    ids = torch.randint(0, config.vocab_size, (4, 128))

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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
          f"6N: {flops / seconds / 1e9:.1f} GFLOP/s); 600 steps at this rate: {600 * seconds:.0f} s")


if __name__ == "__main__":
    main()
