"""Training throughput of ``moxin train`` against a bare PyTorch loop, MFU, and packing efficiency.

Run:  .venv/bin/python benchmarks/train_throughput.py [--quick] [--repeats N] [--json PATH]

1. Tokens/s, moxin vs bare. The moxin path is ``moxin_core.training.stage.train_variant`` (variant
   ``moxin-tiny-base``, stage ``pretrain-128``): ``lightning.Trainer.fit`` with moxin's callbacks,
   checkpointing, CSV/TensorBoard logging and progress bar, exactly what ``moxin train`` runs; its
   figure is ``StageResult.tokens_per_second``. The bare path builds the same model, data,
   optimizer and schedule with moxin's public building blocks and trains them in a plain loop
   (forward, backward, clip, step). Both take their hyper-parameters from the same resolved stage,
   so batch, sequence length, precision, grad clip, weight decay and lr schedule are identical.
   Both time every step the way ``moxin_core.callbacks.TokenThroughput`` does: wall time between
   consecutive step ends, data loading included, the first 2 steps (warm-up) excluded. Runs are
   interleaved (bare, moxin, bare, moxin, ...) because the machine is shared and noisy; we report
   every run, the medians and the ratio of medians (moxin / bare; the target is >= 0.95).
2. MFU = achieved FLOP/s / measured matmul peak of this machine (best of square GEMMs through both
   ``torch.mm`` and ``F.linear``, which take different kernels for bf16 on CPUs, measured before
   and after the training runs). FLOPs per token (forward + backward):
       6 * N_matmul + 12 * n_layers * seq_len * d_attn
   where N_matmul = all parameters except the input embedding (the lm_head matmul counts, the
   embedding lookup does not) and d_attn = n_heads * head_dim; the second term is QK^T and AV,
   forward + backward, over the full (not causally halved) attention matrix, as in PaLM.
3. Packing: tokenise every document of the embedded corpus (seed 0, 20000 documents) and pack it
   with ``DocumentPacker``; report ``packer.efficiency`` (share of tokens, BOS/EOS included, that
   land in full blocks) and the tokenise+pack rate in tokens/s (corpus generation not timed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from moxin_core.corpus import iter_corpus
from moxin_core.data.packing import DocumentPacker
from moxin_core.module import build_optimizer, build_scheduler
from moxin_core.plugins import Registry
from moxin_core.tokenizer import load_tokenizer
from moxin_core.training.blocks import (build_datamodule, build_module, build_objective,
                                        ensure_embedded_tokenizer)
from moxin_core.training.resolve import resolve_variant
from moxin_core.training.stage import train_variant

VARIANT, STAGE = "moxin-tiny-base", "pretrain-128"
SKIP = 2  # warm-up steps left out of tokens/s, as TokenThroughput(skip=2) does
CORPUS_DOCS = 20000

# Peak GEMMs per dtype: (op, n). bf16 torch.mm is ~1 GFLOP/s here, so it only gets n=512.
PEAK_GEMMS = {torch.float32: [("mm", 1024), ("mm", 2048), ("linear", 1024), ("linear", 2048)],
              torch.bfloat16: [("mm", 512), ("linear", 512), ("linear", 1024)]}
PRECISION_DTYPE = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16}


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags")), [])
    return {"cpu": model, "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def gemm_rates(reps: int) -> dict[str, float]:
    """FLOP/s of each peak GEMM, best of ``reps`` calls (best-of: the machine has noisy neighbours)."""
    rates = {}
    for dtype, gemms in PEAK_GEMMS.items():
        for op, n in gemms:
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            fn = torch.mm if op == "mm" else F.linear
            fn(a, b)  # first call allocates and picks kernels
            best = float("inf")
            for _ in range(reps if dtype == torch.float32 else 2):
                start = time.perf_counter()
                fn(a, b)
                best = min(best, time.perf_counter() - start)
            rates[f"{str(dtype).removeprefix('torch.')} {op} {n}"] = 2 * n ** 3 / best
    return rates


def flops_per_token(model: torch.nn.Module, seq_len: int) -> tuple[float, dict]:
    cfg = model.config
    n_matmul = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    if cfg.tie_word_embeddings:  # the lm_head matmul still happens with the shared matrix
        n_matmul += model.get_output_embeddings().weight.numel()
    d_attn = cfg.num_attention_heads * (getattr(cfg, "head_dim", None)
                                        or cfg.hidden_size // cfg.num_attention_heads)
    attention = 12 * cfg.num_hidden_layers * seq_len * d_attn
    return 6 * n_matmul + attention, {"n_matmul_params": n_matmul, "attention_flops": attention}


def stage_settings(precision: str, batch: int, seq_len: int, tokenizer: Path) -> list[str]:
    # checkpoint_every=1000: only the final checkpoint is written, after timing ends.
    return [f"precision={precision}", f"micro_batch_size={batch}", f"seq_len={seq_len}",
            "checkpoint_every=1000", "log_every=1", f"tokenizer={tokenizer}"]


def bare_run(sets: list[str], steps: int) -> dict:
    """A plain PyTorch loop over the same model, data, optimizer and schedule as ``moxin train``."""
    registry = Registry()
    stage = resolve_variant(registry, VARIANT, sets=sets, max_steps=steps).stage(STAGE)
    hp = stage.hparams  # the very hyper-parameters train_variant will use
    tokenizer = load_tokenizer(stage.tokenizer)
    objective = build_objective(registry, stage.objective, stage.objective_options)
    datamodule = build_datamodule(registry, stage.data, objective, tokenizer, hp.seq_len,
                                  hp.micro_batch_size, hp.seed)
    loader = iter(datamodule.train_dataloader())
    pl.seed_everything(hp.seed, verbose=False)  # same point as run_stage: same initial weights
    module = build_module(registry, stage.model, objective, tokenizer, hp)
    model = module.model
    optimizer = build_optimizer(model, hp)
    scheduler = build_scheduler(optimizer, hp)
    # Lightning's bf16-mixed on CPU is torch.autocast(cpu, bf16, cache_enabled=False) around the
    # forward only; 32-true adds nothing.
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)) \
        if hp.precision == "bf16-mixed" else contextlib.nullcontext
    tokens, seconds, losses, last = 0, 0.0, [], 0.0
    for step in range(hp.max_steps):
        # what Lightning does with each batch: the datamodule keeps its stream position
        batch = datamodule.on_before_batch_transfer(next(loader), 0)
        if step == 0:
            last = time.perf_counter()  # TokenThroughput starts at the first batch start
        with autocast():
            out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                        labels=batch["labels"], use_cache=False)
        out.loss.backward()
        if hp.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        now = time.perf_counter()
        if step >= SKIP:
            tokens += objective.num_tokens(batch)
            seconds += now - last
        last = now
    flops, parts = flops_per_token(model, hp.seq_len)
    return {"tokens_per_second": tokens / seconds, "first_loss": losses[0],
            "last_loss": losses[-1], "flops_per_token": flops, **parts}


def moxin_run(sets: list[str], steps: int, out: Path, verbose: bool) -> dict:
    """``moxin train moxin-tiny-base --stage pretrain-128`` in-process, output to a log file."""
    log_file = out.with_suffix(".log")
    with open(log_file, "w") as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The progress bar (stdout) still renders every step; it goes to a file, not the screen.
        with contextlib.ExitStack() as quiet:
            if not verbose:
                quiet.enter_context(contextlib.redirect_stdout(log))
                quiet.enter_context(contextlib.redirect_stderr(log))
            result = train_variant(VARIANT, out, stage=STAGE, max_steps=steps, sets=sets)[0]
    shutil.rmtree(out)  # checkpoints and exports: ~70 MB a run
    if result.steps != steps:
        raise RuntimeError(f"moxin run stopped at step {result.steps} of {steps}; rerun with "
                           "--verbose to see Lightning's output")
    return {"tokens_per_second": result.tokens_per_second, "first_loss": result.first_loss,
            "last_loss": result.last_loss}


def packing(tokenizer_dir: Path, seq_lens: list[int]) -> list[dict]:
    tokenizer = load_tokenizer(tokenizer_dir)
    texts = [r["text"] for r in iter_corpus(seed=0, num_documents=CORPUS_DOCS)]
    rows = []
    for seq_len in seq_lens:
        packer = DocumentPacker(seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id)
        start = time.perf_counter()
        for text in texts:
            packer.add(tokenizer(text, add_special_tokens=False,
                                 split_special_tokens=True)["input_ids"])
        seconds = time.perf_counter() - start
        rows.append({"seq_len": seq_len, "documents": len(texts), "tokens": packer.tokens_in,
                     "efficiency": packer.efficiency, "tokens_per_second": packer.tokens_in / seconds})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (~2 min)")
    ap.add_argument("--repeats", type=int, help="interleaved rounds per precision (default 3; quick 2)")
    ap.add_argument("--steps", type=int, help="fp32 steps per run (default 50; quick 20)")
    ap.add_argument("--batch", type=int, default=8, help="fp32 micro-batch size (default 8)")
    ap.add_argument("--bf16-steps", type=int, help="bf16 steps per run (default: as fp32 on a "
                    "CPU with AVX512-BF16/AMX, else 8; quick 5)")
    ap.add_argument("--bf16-batch", type=int, help="bf16 micro-batch size (default: as fp32 on a "
                    "CPU with AVX512-BF16/AMX, else 2; quick 1)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--precision", nargs="+", default=list(PRECISION_DTYPE), choices=PRECISION_DTYPE)
    ap.add_argument("--pack-seq-lens", type=int, nargs="*", default=[128, 256])
    ap.add_argument("--threads", type=int, help="torch threads for everything (default: torch's "
                    "default, one per core); 1 is steadier on a busy machine")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--verbose", action="store_true", help="show Lightning's output on screen")
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    info = machine()
    fp32_steps = args.steps or (20 if args.quick else 50)
    # without native bf16 a bf16 step is ~20x slower: a smaller workload keeps the run short
    native_bf16 = info["avx512_bf16"] or info["amx_bf16"]
    workload = {"32-true": (fp32_steps, args.batch),
                "bf16-mixed": (args.bf16_steps or (fp32_steps if native_bf16 else
                                                   5 if args.quick else 8),
                               args.bf16_batch or (args.batch if native_bf16 else
                                                   1 if args.quick else 2))}
    for steps, _ in workload.values():
        if steps <= SKIP:
            ap.error(f"steps must exceed the {SKIP} warm-up steps")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)  # Lightning keeps it for a single-device CPU run
        info = machine()
    print(f"Machine: {info['cpu']}, {info['logical_cpus']} CPUs, torch {info['torch']} "
          f"({info['torch_threads']} threads); AVX2={info['avx2']}, "
          f"AVX512-BF16={info['avx512_bf16']}, AMX-BF16={info['amx_bf16']}")
    # Other processes on 2 cores stall torch's OpenMP threads badly: record the load we ran under.
    report: dict = {"machine": info, "repeats": repeats, "training": {},
                    "load_average_start": os.getloadavg()[0]}
    if report["load_average_start"] > 0.5:
        print(f"Warning: load average {report['load_average_start']:.1f} before starting. Another "
              "busy process stalls torch's OpenMP threads (several-fold slower steps); the "
              "interleaving keeps the ratio fair only if the load is steady. Try --threads 1.")

    with tempfile.TemporaryDirectory(prefix="moxin-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        # Trained once; every run loads it through the settable `tokenizer` key.
        tok_dir = ensure_embedded_tokenizer(tmp / "tokenizer", 2048)
        rates = gemm_rates(reps=5)
        for precision in args.precision:
            steps, batch = workload[precision]
            sets = stage_settings(precision, batch, args.seq_len, tok_dir)
            print(f"\n{precision}: {steps} steps x batch {batch} x seq {args.seq_len} per run, "
                  f"{repeats} interleaved rounds (bare, moxin)")
            if precision == "bf16-mixed" and not native_bf16:
                print("  (a much smaller workload than fp32 by default: without AVX512-BF16/AMX "
                      "this CPU has no native bf16 matmul, so bf16 steps are ~20x slower)")
            bare, moxin = [], []
            for r in range(repeats):
                bare.append(bare_run(sets, steps))
                moxin.append(moxin_run(sets, steps, tmp / f"run-{precision}-{r}", args.verbose))
                print(f"  round {r + 1}: bare {bare[-1]['tokens_per_second']:8.1f} tok/s   "
                      f"moxin {moxin[-1]['tokens_per_second']:8.1f} tok/s   (loss "
                      f"{bare[-1]['first_loss']:.3f}->{bare[-1]['last_loss']:.3f} / "
                      f"{moxin[-1]['first_loss']:.3f}->{moxin[-1]['last_loss']:.3f})")
            report["training"][precision] = {
                "steps": steps, "micro_batch_size": batch, "seq_len": args.seq_len,
                "flops_per_token": bare[0]["flops_per_token"],
                "n_matmul_params": bare[0]["n_matmul_params"],
                "bare": [b["tokens_per_second"] for b in bare],
                "moxin": [m["tokens_per_second"] for m in moxin],
                "losses": {"bare": [(b["first_loss"], b["last_loss"]) for b in bare],
                           "moxin": [(m["first_loss"], m["last_loss"]) for m in moxin]}}
        # Peak again after training: best-of over the whole run is the fairest peak on a shared VM.
        rates = {k: max(v, r) for (k, v), r in zip(rates.items(), gemm_rates(reps=5).values())}
        pack = packing(tok_dir, args.pack_seq_lens)

    peak = {dtype: max(v for k, v in rates.items() if k.startswith(str(dtype).removeprefix("torch.")))
            for dtype in PEAK_GEMMS}
    report["gemm_flops"] = rates
    report["packing"] = pack
    print("\nMatmul rates (best of runs, GFLOP/s): "
          + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in rates.items()))
    fpt = next(iter(report["training"].values()), {}).get("flops_per_token")
    if fpt:
        print(f"FLOPs/token = 6*N_matmul + 12*n_layers*seq_len*d_attn = {fpt / 1e6:.2f} M "
              f"(N_matmul = {next(iter(report['training'].values()))['n_matmul_params']:,}: all "
              "parameters but the input embedding)")
    print(f"\n{'precision':<11}{'steps x batch x seq':<20}{'bare tok/s (median; runs)':<34}"
          f"{'moxin tok/s (median; runs)':<34}{'moxin/bare':>10}{'MFU bare':>10}{'MFU moxin':>11}")
    for precision, row in report["training"].items():
        row["bare_median"], row["moxin_median"] = (statistics.median(row["bare"]),
                                                   statistics.median(row["moxin"]))
        row["ratio"] = row["moxin_median"] / row["bare_median"]
        row["peak_flops"] = peak[PRECISION_DTYPE[precision]]
        row["mfu_bare"], row["mfu_moxin"] = (row[f"{k}_median"] * row["flops_per_token"]
                                             / row["peak_flops"] for k in ("bare", "moxin"))
        runs = {k: f"{row[f'{k}_median']:.0f}; " + " ".join(f"{v:.0f}" for v in row[k])
                for k in ("bare", "moxin")}
        shape = f"{row['steps']}x{row['micro_batch_size']}x{row['seq_len']}"
        print(f"{precision:<11}{shape:<20}"
              f"{runs['bare']:<34}{runs['moxin']:<34}{row['ratio']:>10.3f}"
              f"{row['mfu_bare']:>10.1%}{row['mfu_moxin']:>11.1%}")
    print("  MFU against the measured peak: "
          + ", ".join(f"{str(d).removeprefix('torch.')} {v / 1e9:.1f} GFLOP/s" for d, v in peak.items())
          + f"; target moxin/bare >= 0.95; load average before start "
          f"{report['load_average_start']:.1f}")
    print(f"\n{'packing seq_len':<17}{'documents':>10}{'tokens':>11}{'efficiency':>12}"
          f"{'tokenise+pack tok/s':>21}")
    for row in pack:
        print(f"{row['seq_len']:<17}{row['documents']:>10}{row['tokens']:>11}"
              f"{row['efficiency']:>12.4%}{row['tokens_per_second']:>21,.0f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nWrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
