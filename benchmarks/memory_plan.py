"""Planned against measured peak memory of real training steps: the check of ``moxin plan``.

Run:  .venv/bin/python benchmarks/memory_plan.py [--cases NAME ...] [--json PATH]

Each case (``moxin_core.testing.memory.CHECKED_STEPS``) trains one optimizer step of the ``lm``
objective on the CPU: a Moxin-shaped Mistral model of hidden 256, 4 layers, 8/2 heads, vocab
32000 (19.8 M parameters), built by the ``causal-lm`` family, micro-batch 2 x 256 tokens of two
packed documents per row, SDPA attention, AdamW, gradient clipping; LoRA through ``peft`` (rank
16, alpha 32, every projection). The peak is the largest amount of tensor memory alive at once
(``LiveTensorBytes``, a TorchDispatchMode), measured on the step after AdamW's state exists.
The planned peak is ``moxin_core.planning.estimate_memory`` for the same settings on one device.
Takes about 1-2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import torch

from moxin_core.testing.memory import (CHECKED_STEPS, check_config, measure_causal_lm_step,
                                       planned_step)

MIB = 2 ** 20


def run_case(name: str) -> dict:
    """Measure and plan one case; the figures in bytes and the relative error."""
    settings = CHECKED_STEPS[name]
    config = check_config()
    start = time.perf_counter()
    measured = measure_causal_lm_step(config, **settings)
    seconds = time.perf_counter() - start
    plan = planned_step(config, **settings)
    return {"case": name, "settings": settings, "measured_bytes": measured.peak,
            "planned_bytes": plan.peak, "planned_parts_bytes": plan.sizes(),
            "peak_moment": plan.moment, "error": (plan.peak - measured.peak) / measured.peak,
            "seconds": round(seconds, 1)}


def print_table(rows: list[dict]) -> None:
    print(f"{'case':<34}{'planned':>10}{'measured':>10}{'error':>8}   planned parts (MiB: "
          "weights / grads / optim / activ. / logits)")
    for row in rows:
        parts = row["planned_parts_bytes"]
        split = " / ".join(f"{parts[p] / MIB:.1f}" for p in
                           ("weights", "gradients", "optimizer", "activations", "logits"))
        print(f"{row['case']:<34}{row['planned_bytes'] / MIB:>10.1f}"
              f"{row['measured_bytes'] / MIB:>10.1f}{row['error']:>+8.1%}   {split}")
    print("(MiB; planned = moxin plan's formulas, measured = peak live tensor memory of the step)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CHECKED_STEPS), metavar="NAME",
                        help=f"cases to run (default all): {', '.join(CHECKED_STEPS)}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    args = parser.parse_args()
    unknown = [c for c in args.cases if c not in CHECKED_STEPS]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CHECKED_STEPS)}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    rows = [run_case(name) for name in args.cases]
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(),
                       "torch": torch.__version__, "cases": rows}, f, indent=2)


if __name__ == "__main__":
    main()
