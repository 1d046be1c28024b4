"""Loglikelihood requests/s of ``moxin eval`` beside lm-eval's own command line, and of GGUF files.

Run:  .venv/bin/python benchmarks/eval_throughput.py [--quick] [--repeats N] [--limit N]
                                                      [--batch-size N] [--json PATH]

1. A Mistral-architecture model with random weights (hidden 512, 8 layers, 8 heads / 2 KV heads,
   FFN 1792, the 2048-piece embedded tokenizer: ~27 M parameters; --quick: hidden 256, 2 layers)
   is saved as an HF folder and exported to GGUF f32 and q8_0 (random weights are fine for
   timing; scores are not the point here).
2. The same task (``moxin_tiny_mc``: ``--limit`` questions x 4 choices = loglikelihood requests)
   is scored by:
   * ``lm_eval --model hf --model_args pretrained=DIR,dtype=float32 --tasks moxin_tiny_mc
     --include_path <plugin tasks> --limit N --batch_size B --device cpu`` (lm-eval's CLI);
   * ``moxin eval DIR --tasks moxin_tiny_mc --limit N --batch-size B``;
   * ``moxin eval model.f32.gguf`` and ``model.q8_0.gguf`` (llama.cpp).
   Each is a fresh process timed from start to exit (interpreter start-up, imports and model
   loading included, as a user waits for it); requests/s = requests / wall seconds. One warm-up
   round, then ``--repeats`` interleaved rounds; medians are reported, with the ratio
   moxin / lm-eval CLI of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "plugins" / "moxin-plugin-lmeval" / "moxin_plugin_lmeval" / "tasks"
FULL = {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
        "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 1792}
QUICK = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8,
         "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 896}
CHOICES = 4


def build(folder: Path, shape: dict) -> tuple[Path, Path, Path]:
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig

    from moxin_core.api import Registry, ensure_embedded_tokenizer, load_tokenizer, save_model

    tokenizer_dir = ensure_embedded_tokenizer(folder / "tok", 2048)
    config = MistralConfig(vocab_size=2048, max_position_embeddings=512, sliding_window=512,
                           tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, **shape)
    torch.manual_seed(0)
    hf = save_model(AutoModelForCausalLM.from_config(config).eval(),
                    load_tokenizer(tokenizer_dir), folder / "hf", tokenizer_dir)
    exporter = Registry().get("exporters", "gguf")()
    f32 = Path(exporter(str(hf), str(folder / "model.f32.gguf"), outtype="f32", verify=False))
    q8 = Path(exporter(str(hf), str(folder / "model.q8_0.gguf"), outtype="q8_0", verify=False))
    return hf, f32, q8


def env() -> dict:
    drop = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env(), cwd=REPO)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{result.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json")
    args = parser.parse_args()
    limit = min(args.limit, 100) if args.quick else args.limit
    requests = limit * CHOICES
    with tempfile.TemporaryDirectory() as tmp:
        hf, f32, q8 = build(Path(tmp), QUICK if args.quick else FULL)
        moxin = [sys.executable, "-m", "moxin_core.cli", "eval"]
        common = ["--tasks", "moxin_tiny_mc", "--limit", str(limit)]
        commands = {
            "lm-eval CLI (hf)": [sys.executable, "-m", "lm_eval", "--model", "hf",
                                 "--model_args", f"pretrained={hf},dtype=float32",
                                 *common, "--include_path", str(TASKS), "--batch_size",
                                 str(args.batch_size), "--device", "cpu"],
            "moxin eval (hf)": [*moxin, str(hf), *common, "--batch-size", str(args.batch_size)],
            "moxin eval (GGUF f32)": [*moxin, str(f32), *common],
            "moxin eval (GGUF q8_0)": [*moxin, str(q8), *common],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for name, command in commands.items():  # warm-up: caches, page cache, imports
            timed(command)
        for _ in range(args.repeats):
            for name, command in commands.items():
                times[name].append(timed(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"moxin_tiny_mc, {limit} questions x {CHOICES} choices = {requests} loglikelihood "
          f"requests, batch {args.batch_size}, {args.repeats} rounds (medians, whole process)")
    print(f"{'':<24}{'wall s':>10}{'requests/s':>12}")
    for name, wall in medians.items():
        print(f"{name:<24}{wall:>10.2f}{requests / wall:>12.1f}")
    ratio = medians["lm-eval CLI (hf)"] / medians["moxin eval (hf)"]
    print(f"moxin eval / lm-eval CLI requests/s: {ratio:.3f}")
    summary = {"requests": requests, "batch_size": args.batch_size, "repeats": args.repeats,
               "wall_seconds": times, "medians": medians, "ratio_moxin_over_cli": ratio,
               "machine": platform.processor() or platform.machine(),
               "model": "quick" if args.quick else "full"}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
