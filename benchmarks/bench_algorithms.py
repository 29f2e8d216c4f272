"""Time advantages + loss + backward for each algorithm on a batch of 512 responses x 2,048 tokens.

    python benchmarks/bench_algorithms.py [--batch 512] [--tokens 2048] [--repeats 5]

Prints the median seconds per algorithm and the VIMPO / GRPO ratio (target: at most 1.5).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vimpo_bench.algorithms import Batch, get

CASES = [("vimpo", {}), ("vimpo", {"advantage": "mc"}), ("vimpo", {"lam": 0.99}), ("grpo", {}),
         ("dr_grpo", {}), ("dapo", {}), ("rloo", {})]


def make_batch(B: int, T: int, group_size: int = 8) -> tuple[Batch, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    logp = (torch.randn(B, T, generator=g) * 0.1 - 1.0).requires_grad_(True)
    batch = Batch(logp=logp, old_logp=logp.detach() + 0.01 * torch.randn(B, T, generator=g),
                  ref_logp=logp.detach() + 0.05 * torch.randn(B, T, generator=g), mask=mask,
                  rewards=(torch.rand(B, generator=g) < 0.5).float(),
                  group_ids=torch.arange(B) // group_size, include=torch.rand(B, generator=g) >= 0.05)
    return batch, logp


def time_case(name: str, opts: dict, B: int, T: int, repeats: int) -> float:
    algo = get(name, **opts)
    times = []
    for _ in range(repeats + 1):
        batch, logp = make_batch(B, T)
        start = time.perf_counter()
        adv = algo.advantages(batch)
        loss, _ = algo.loss(batch.with_advantages(adv))
        loss.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first run warms up the allocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"advantages + loss + backward, {args.batch} x {args.tokens}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    results = {}
    for name, opts in CASES:
        label = name + "".join(f" {k}={v}" for k, v in opts.items())
        results[label] = time_case(name, opts, args.batch, args.tokens, args.repeats)
        print(f"  {label:28s} {results[label] * 1000:8.1f} ms")
    ratio = results["vimpo"] / results["grpo"]
    print(f"VIMPO / GRPO = {ratio:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
