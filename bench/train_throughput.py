"""Training and batch-encode throughput on the CPU and, where there is one, on a CUDA GPU.

Both devices run the same trainer on the same simulated states at the same batch sizes in one
run, so the CUDA/CPU ratio compares like with like. It prints the hardware it ran on.

    python bench/train_throughput.py [--states 50000] [--batch-sizes 64,256,1024]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch
from machine import machine

from memory_tiers import default_schema
from memory_tiers.engine import EmbeddingEngine
from memory_tiers.sim import simulate_states
from memory_tiers.train import AutoencoderTrainer, TrainConfig


def train_rate(features: torch.Tensor, device: str, batch_size: int, epochs: int) -> float:
    """Training samples/s over `epochs` full epochs, after one warm-up epoch."""
    config = TrainConfig(batch_size=batch_size, device=device, progress=False)
    trainer = AutoencoderTrainer(default_schema(), config=config)
    x = features.to(trainer.device)
    generator = torch.Generator().manual_seed(0)
    trainer.train_epoch(x, generator)
    _sync(device)
    started = time.perf_counter()
    for _ in range(epochs):
        trainer.train_epoch(x, generator)
    _sync(device)
    return len(x) * epochs / (time.perf_counter() - started)


def encode_rate(features: torch.Tensor, device: str, batch_size: int) -> float:
    """States/s through encode_features (all three tiers) in batches of `batch_size`."""
    with warnings.catch_warnings():  # untrained weights encode as fast as trained ones
        warnings.simplefilter("ignore")
        engine = EmbeddingEngine.untrained(device=device)
    rows = features.numpy()
    engine.encode_features(rows[:batch_size])
    started = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        engine.encode_features(rows[start : start + batch_size])
    return len(rows) / (time.perf_counter() - started)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    logging.getLogger("memory_tiers.engine").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-sizes", default="64,256,1024")
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    features = torch.from_numpy(default_schema().extract_batch(simulate_states(args.states)))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"CPU: {machine()}, torch threads {torch.get_num_threads()}")
    if "cuda" in devices:
        print(f"GPU: {torch.cuda.get_device_name()}")
    print(f"torch {torch.__version__}; {args.states} states, input_dim {features.shape[1]}")
    print("| batch | device | train samples/s | encode states/s |")
    print("|---|---|---|---|")
    for batch_size in batch_sizes:
        rates = {}
        for device in devices:
            rates[device] = train_rate(features, device, batch_size, args.epochs)
            encode = encode_rate(features, device, batch_size)
            print(f"| {batch_size} | {device} | {rates[device]:,.0f} | {encode:,.0f} |")
        if "cuda" in rates:
            print(f"| {batch_size} | cuda/cpu | {rates['cuda'] / rates['cpu']:.1f}x | |")


if __name__ == "__main__":
    main()
