"""``moxin train`` against a bare PyTorch loop on one GPU: tokens/s, MFU and peak memory.

Run:  .venv/bin/python benchmarks/gpu_throughput.py [--device cuda|cpu] [--size 1.2b|tiny]
                                                   [--paths bare moxin compile lora]
                                                   [--steps N] [--repeats N] [--json PATH]

The model is Mistral-shaped; ``1.2b`` is the configuration of the GPU-performance issue (hidden
2048, 20 layers, 16 heads, 4 KV heads, vocabulary 32000: 1.22 B parameters), trained at
micro-batch 8 x 2048 tokens in bf16-mixed with AdamW; ``tiny`` is ``moxin-tiny``'s shape at
8 x 256 in fp32 (the CPU smoke run, ``--device cpu``). Both paths start from the same random
weights, saved once to a model folder.

* **bare**: a plain loop over pre-built batches already in memory (no data loading timed):
  forward with plain causal SDPA (no position ids, so no per-document mask), backward, clip,
  AdamW (fused on CUDA), scheduler, ``zero_grad``; one host synchronisation per step (the loss
  is read).
* **moxin**: ``moxin train moxin-tiny-base --stage pretrain-128`` in-process with
  ``--set pretrain-128.model=FOLDER seq_len=... micro_batch_size=... precision=...`` and the
  stage defaults (``attention=auto``: flex attention with the packed-document block mask on
  CUDA), 2 data-loader workers and logging every 10 steps; its figure is the stage's own
  tokens/s (data loading, logging and the progress bar included, the first 2 steps excluded).
* **compile**: the same with ``compile=true`` (the compilation falls in the excluded warm-up
  steps only partly: run enough ``--steps``).
* **lora**: LoRA (r 16) SFT of the full ``moxin-7b`` configuration (random weights; the
  embedded tokenizer's 2,048-token vocabulary, so 7.9 B parameters) on the embedded
  instructions, micro-batch 4 x 2048 in bf16-mixed, for a few steps: its tokens/s and peak
  memory (on the CPU the tiny model stands in). Run once, not interleaved.

MFU = FLOP/s / the measured matmul peak of the device (best of square GEMMs in the run's dtype).
FLOPs per token: 6 x matmul parameters + 12 x layers x seq_len x attention width (PaLM, the
attention matrix not halved for causality), as ``benchmarks/train_throughput.py`` counts them.
Peak memory on CUDA is ``torch.cuda.max_memory_allocated`` of each run (reset before it).
Runs are interleaved (bare, moxin, bare, moxin, ...); medians and the moxin/bare ratio are
reported. On one H100/H200 the default run takes a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from moxin_core.models.causal_lm import CausalLMFamily
from moxin_core.module import build_optimizer, build_scheduler
from moxin_core.plugins import Registry
from moxin_core.tokenizer import load_tokenizer
from moxin_core.training.blocks import build_datamodule, build_objective, ensure_embedded_tokenizer
from moxin_core.training.resolve import resolve_variant
from moxin_core.training.stage import train_variant

VARIANT, STAGE = "moxin-tiny-base", "pretrain-128"
SKIP = 3  # warm-up steps (kernel selection, compilation) left out of the bare loop's tokens/s
SIZES = {  # hidden, layers, heads, kv heads, intermediate, vocab, batch, seq_len, precision
    "1.2b": dict(hidden_size=2048, num_hidden_layers=20, num_attention_heads=16,
                 num_key_value_heads=4, intermediate_size=5632, vocab_size=32000,
                 batch=8, seq_len=2048, precision="bf16-mixed"),
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2, intermediate_size=704, vocab_size=2048,
                 batch=8, seq_len=256, precision="32-true"),
}


def _config(size: str) -> "MistralConfig":  # noqa: F821
    from transformers import MistralConfig

    spec = {k: v for k, v in SIZES[size].items() if k not in ("batch", "seq_len", "precision")}
    return MistralConfig(**spec, max_position_embeddings=4096, sliding_window=None,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2)


def model_folder(size: str, root: Path, tokenizer: Path) -> Path:
    config = _config(size)
    family = CausalLMFamily()
    torch.manual_seed(0)
    return family.save(family.build(config), load_tokenizer(tokenizer), root / f"model-{size}",
                       tokenizer)


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """Best FLOP/s of square GEMMs in ``dtype`` on ``device``."""
    sizes = [4096, 8192] if device == "cuda" else [1024, 2048]
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        for _ in range(5):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


def _release(device: str) -> None:
    """Free what the previous run left (Lightning's trainer and module refer to each other, so
    only the cycle collector frees them), then start this run's peak memory from here."""
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    cfg = model.config
    embedding = model.get_input_embeddings().weight.numel()  # a lookup, not a matmul
    matmul = sum(p.numel() for p in model.parameters()) - embedding
    width = cfg.num_attention_heads * (getattr(cfg, "head_dim", None)
                                       or cfg.hidden_size // cfg.num_attention_heads)
    return 6 * matmul + 12 * cfg.num_hidden_layers * seq_len * width


def settings(folder: Path, tokenizer: Path, size: str, device: str) -> list[str]:
    spec = SIZES[size]
    return [f"pretrain-128.model={folder}", f"tokenizer={tokenizer}",
            f"seq_len={spec['seq_len']}", f"micro_batch_size={spec['batch']}",
            f"precision={spec['precision']}", f"accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            "devices=1", "checkpoint_every=100000", "log_every=10", "warmup_steps=2",
            "data_workers=2"]


def lora_run(folder: Path, tokenizer: Path, size: str, device: str, steps: int,
             out: Path) -> dict:
    """LoRA SFT of ``moxin-7b`` (``tiny``: the benchmark's own tiny model) for ``steps``."""
    big = size != "tiny"
    sets = [f"sft.model={'moxin-7b' if big else folder}", f"tokenizer={tokenizer}",
            "sft.data=[{source: embedded_instructions, num_examples: 2000}]",
            f"seq_len={2048 if big else 256}", f"micro_batch_size={4 if big else 2}",
            f"precision={'bf16-mixed' if big else '32-true'}", "lora.r=16", "sft.evaluators=[]",
            f"accelerator={'gpu' if device == 'cuda' else 'cpu'}", "devices=1",
            "checkpoint_every=100000", "log_every=1", "warmup_steps=0", "data_workers=2"]
    _release(device)
    log = out.with_suffix(".log")
    with open(log, "w") as stream, warnings.catch_warnings(), \
            contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        warnings.simplefilter("ignore")
        result = train_variant("moxin-tiny-instruct", out, stage="sft", max_steps=steps,
                               sets=sets)[0]
    manifest = json.loads((out / "sft" / "manifest.json").read_text())
    shutil.rmtree(out)
    return {"model": "moxin-7b" if big else "tiny", "steps": result.steps,
            "tokens_per_second": result.tokens_per_second, "first_loss": result.first_loss,
            "last_loss": result.last_loss,
            "peak_memory_bytes": manifest["peak_memory"].get("gpu_max_allocated_bytes")}


def bare_run(sets: list[str], steps: int, device: str) -> dict:
    registry = Registry()
    stage = resolve_variant(registry, VARIANT, sets=sets, max_steps=steps).stage(STAGE)
    hp = stage.hparams
    tokenizer = load_tokenizer(stage.tokenizer)
    objective = build_objective(registry, stage.objective, stage.objective_options)
    datamodule = build_datamodule(registry, stage.data, objective, tokenizer, hp.seq_len,
                                  hp.micro_batch_size, hp.seed)
    batches = []
    for batch in datamodule.iter_batches():  # built before timing: data loading not measured
        batches.append({k: batch[k].to(device) for k in ("input_ids", "labels")})
        if len(batches) == steps:
            break
    family = CausalLMFamily()
    model = family.load(stage.model).to(device).train()
    optimizer = build_optimizer(model, hp)
    scheduler = build_scheduler(optimizer, hp)
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) \
        if hp.precision == "bf16-mixed" else contextlib.nullcontext
    _release(device)
    losses, start = [], 0.0
    for step, batch in enumerate(batches):
        if step == SKIP:
            _sync(device)
            start = time.perf_counter()
        with autocast():  # plain causal attention: no position ids, no document mask
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"],
                         use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # the one host synchronisation per step
    _sync(device)
    seconds = time.perf_counter() - start
    tokens = sum(objective.num_tokens(b) for b in batches[SKIP:])
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    flops = flops_per_token(model, hp.seq_len)
    del model, optimizer, batches
    return {"tokens_per_second": tokens / seconds, "first_loss": losses[0],
            "last_loss": losses[-1], "peak_memory_bytes": peak, "flops_per_token": flops}


def moxin_run(sets: list[str], steps: int, out: Path, device: str) -> dict:
    _release(device)
    log = out.with_suffix(".log")
    with open(log, "w") as stream, warnings.catch_warnings(), \
            contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        warnings.simplefilter("ignore")
        result = train_variant(VARIANT, out, stage=STAGE, max_steps=steps, sets=sets)[0]
    manifest = json.loads((out / STAGE / "manifest.json").read_text())
    shutil.rmtree(out)
    if result.steps != steps:
        raise RuntimeError(f"moxin stopped at step {result.steps} of {steps}; see {log}")
    peak = manifest["peak_memory"].get("gpu_max_allocated_bytes")
    return {"tokens_per_second": result.tokens_per_second, "first_loss": result.first_loss,
            "last_loss": result.last_loss, "peak_memory_bytes": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"],
                    default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", choices=list(SIZES), help="default: 1.2b on cuda, tiny on cpu")
    ap.add_argument("--steps", type=int, help="steps per run (default 30 on cuda, 8 on cpu)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    ap.add_argument("--paths", nargs="+", choices=["bare", "moxin", "compile", "lora"],
                    help="what to run (default: all on cuda; bare and moxin on cpu)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_throughput.py: no CUDA device here; run with --device cpu for "
                         "the smoke run.")
    size = args.size or ("1.2b" if device == "cuda" else "tiny")
    steps = args.steps or (30 if device == "cuda" else 8)
    dtype = torch.bfloat16 if SIZES[size]["precision"] == "bf16-mixed" else torch.float32
    root = Path(tempfile.mkdtemp(prefix="moxin-gpu-bench-"))
    try:
        tokenizer = ensure_embedded_tokenizer(root / "tokenizer", 2048)
        folder = model_folder(size, root, tokenizer)
        sets = settings(folder, tokenizer, size, device)
        peak = matmul_peak(device, dtype)
        paths = args.paths or (["bare", "moxin", "compile", "lora"] if device == "cuda"
                               else ["bare", "moxin"])
        runs: dict[str, list[dict]] = {p: [] for p in paths if p != "lora"}
        for round_ in range(args.repeats):
            for path in runs:
                if path == "bare":
                    runs[path].append(bare_run(sets, steps, device))
                else:
                    extra = ["compile=true"] if path == "compile" else []
                    runs[path].append(moxin_run(sets + extra, steps,
                                                root / f"{path}-{round_}", device))
            print(f"round {round_ + 1}: " + ", ".join(
                f"{p} {rows[-1]['tokens_per_second']:,.0f}" for p, rows in runs.items())
                + " tokens/s", flush=True)
        lora = lora_run(folder, tokenizer, size, device, min(steps, 6), root / "lora") \
            if "lora" in paths else None
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with torch.device("meta"):  # the shape only
        flops = flops_per_token(CausalLMFamily().build(_config(size)), SIZES[size]["seq_len"])
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    report = {"device": name, "size": size, "steps": steps, "matmul_peak_flops": peak,
              "flops_per_token": flops, "runs": runs, "lora": lora}
    print(f"\n{name}, {size} model, {SIZES[size]['batch']} x {SIZES[size]['seq_len']} tokens, "
          f"{SIZES[size]['precision']}, {steps} steps x {args.repeats} rounds; matmul peak "
          f"{peak / 1e12:.1f} TFLOP/s")
    print("| path | tokens/s (median) | MFU | peak memory |\n| --- | ---: | ---: | ---: |")
    for path, rows in runs.items():
        rate = statistics.median(r["tokens_per_second"] for r in rows)
        memory = [r["peak_memory_bytes"] for r in rows if r["peak_memory_bytes"]]
        shown = f"{max(memory) / 2**30:.1f} GiB" if memory else "n/a (CPU)"
        report[f"{path}_median"] = rate
        report[f"{path}_mfu"] = rate * flops / peak
        print(f"| {path} | {rate:,.0f} | {rate * flops / peak:.1%} | {shown} |")
    if "moxin" in runs and "bare" in runs:
        report["ratio"] = report["moxin_median"] / report["bare_median"]
        print(f"moxin/bare = {report['ratio']:.3f}")
    if lora is not None:
        memory = lora["peak_memory_bytes"]
        print(f"LoRA r=16 SFT of {lora['model']}: {lora['steps']} steps, "
              f"{lora['tokens_per_second']:,.0f} tokens/s, loss {lora['first_loss']:.3f} -> "
              f"{lora['last_loss']:.3f}, peak memory "
              + (f"{memory / 2**30:.1f} GiB" if memory else "n/a (CPU)"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
