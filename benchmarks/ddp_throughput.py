"""Tokens/s of `moxin train` on one process against two DDP processes on this CPU (gloo).

Run:  .venv/bin/python benchmarks/ddp_throughput.py [--rounds N] [--steps N] [--json PATH]

Both runs are ``moxin train moxin-tiny-base --stage pretrain-128`` in a subprocess (the command a
user types), fp32, sequence length 128, micro-batch ``--batch`` per rank; the DDP run adds
``devices=2 strategy=ddp accelerator=cpu`` (Lightning's launcher starts the second rank; Lightning
gives each of the 2 processes ``cores / 2`` torch threads, the single process keeps torch's
default of one per core). The figure of each run is the manifest's ``tokens_per_second``: the
tokens of all ranks after the first 2 warm-up batches, over the time each rank took. Runs are
interleaved (1 process, 2 processes, 1, 2, ...) because the machine is shared; the script prints
every run, the medians and their ratio. Two processes train twice the tokens per step (the global
batch doubles), so the ratio is the scaling of throughput, not of time per step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(out: Path, tokenizer: Path, steps: int, batch: int, ranks: int) -> dict:
    settings = ["pretrain-128.model=moxin-tiny", "seq_len=128", f"micro_batch_size={batch}",
                "checkpoint_every=100000", "log_every=1", f"tokenizer={tokenizer}",
                "precision=32-true", "accelerator=cpu"]
    if ranks > 1:
        settings += [f"devices={ranks}", "strategy=ddp"]
    command = [sys.executable, "-m", "moxin_core.cli", "train", "moxin-tiny-base", "--out",
               str(out), "--stage", "pretrain-128", "--max-steps", str(steps),
               *sum((["--set", s] for s in settings), [])]
    # each run's ranks pick a free port (a MASTER_PORT left in this environment may be taken)
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"moxin train failed:\n{result.stderr[-3000:]}")
    manifest = json.loads((out / "pretrain-128" / "manifest.json").read_text())
    return {"tokens_per_second": manifest["tokens_per_second"], "tokens": manifest["tokens"],
            "world_size": manifest["world_size"], "last_loss": manifest["last_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=8, help="micro-batch size per rank")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    from moxin_core.api import ensure_embedded_tokenizer

    print(f"Machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} before start")
    report: dict = {"steps": args.steps, "micro_batch_size": args.batch, "seq_len": 128,
                    "cpus": os.cpu_count(), "load_average_start": os.getloadavg()[0],
                    "runs": {"1": [], "2": []}}
    with tempfile.TemporaryDirectory(prefix="moxin-ddp-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        tokenizer = ensure_embedded_tokenizer(tmp / "tokenizer", 2048)
        for round_ in range(args.rounds):
            for ranks in (1, 2):
                figures = run(tmp / f"r{round_}-{ranks}", tokenizer, args.steps, args.batch, ranks)
                report["runs"][str(ranks)].append(figures)
                print(f"  round {round_ + 1}: {ranks} process(es): "
                      f"{figures['tokens_per_second']:8.1f} tok/s (all ranks), "
                      f"{figures['tokens']} tokens, last loss {figures['last_loss']:.3f}")
    medians = {k: statistics.median(r["tokens_per_second"] for r in v)
               for k, v in report["runs"].items()}
    report["medians"] = medians
    report["ratio"] = medians["2"] / medians["1"]
    print(f"\n{'processes':<11}{'tok/s (median; runs)':<40}{'tok/s per process':>18}")
    for ranks, runs in report["runs"].items():
        values = " ".join(f"{r['tokens_per_second']:.0f}" for r in runs)
        print(f"{ranks:<11}{f'{medians[ranks]:.0f}; {values}':<40}"
              f"{medians[ranks] / int(ranks):>18.0f}")
    print(f"2 DDP processes / 1 process: {report['ratio']:.2f}x tokens/s "
          f"(micro-batch {args.batch} per process, seq 128, {args.steps} steps, fp32)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"Wrote {args.json}")


if __name__ == "__main__":
    main()
