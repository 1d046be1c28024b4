"""GGUF export time and peak memory, and llama.cpp generation speed beside HF transformers.

Run:  .venv/bin/python benchmarks/gguf_export.py [--quick] [--repeats N] [--new-tokens N]
                                                  [--threads N] [--json PATH]

1. A Mistral-architecture model of a few hundred MB is built with random weights (hidden 768,
   12 layers, 12 heads / 4 KV heads, FFN 3072, the project's 2048-piece embedded tokenizer:
   ~107 M parameters, ~430 MB of f32 safetensors) and saved as an HF folder with
   ``moxin_core.export.save_model``. Random weights are fine for timing; they are not for
   the parity check (near-flat logits flip arg-maxes under any rounding, see the plugin's tests),
   so the exports run with ``verify=False``: the figures are the writer's cost.
2. Export: ``export_gguf(hf, out, outtype=f16|q8_0, verify=False)``, each run in a fresh child
   process. The time is measured inside the child around the call (interpreter start-up and
   imports excluded; the whole process's wall time is reported too). The peak memory is the
   child's ``ru_maxrss`` as the parent collects it with ``os.wait4`` (the per-child figure that
   ``getrusage(RUSAGE_CHILDREN)`` accumulates), next to the child's ``ru_maxrss`` just before the
   export (imports: Python, torch, transformers, numpy, gguf), the difference, and the model's
   size on disk. A streamed writer adds about its largest tensor and buffers, not the model size.
3. Generation: the same prompt through ``LlamaCppRuntime`` (the runtime behind ``moxin generate
   x.gguf``) on the q8_0 and f16 files and through transformers ``generate`` on the fp32 HF
   folder: greedy, exactly ``--new-tokens`` new tokens (EOS ignored in llama.cpp; HF gets
   ``min_new_tokens == max_new_tokens``), the same thread count for both. tokens/s = new tokens /
   wall time of the call, prompt processing included. One warm-up call each, then ``--repeats``
   interleaved rounds (q8_0, f16, HF, q8_0, ...); medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT = ("Question: Mia has 12 apples and buys 30 more. How many apples does she have now?\n"
          "Answer:")
MB = 1e6

#: the model of the full run (~107 M parameters) and of --quick (~3 M)
FULL_MODEL = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
              "num_key_value_heads": 4, "head_dim": 64, "intermediate_size": 3072}
QUICK_MODEL = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8,
               "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 1024}


# --------------------------------------------------------------------------------------------
# Other processes
# --------------------------------------------------------------------------------------------


class OtherCPU:
    """CPU seconds other processes used between ``start()`` and ``stop()``.

    Busy time of the whole machine (``/proc/stat``) minus this process's and its waited-for
    children's (``os.times``): on a 2-core machine a neighbour's training run slows llama.cpp's
    spinning threads several-fold, so every measurement records how busy the machine was.
    """

    def __init__(self) -> None:
        self._start = (0.0, 0.0)

    @staticmethod
    def _snapshot() -> tuple[float, float]:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
        machine = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
        mine = os.times()
        return machine, mine.user + mine.system + mine.children_user + mine.children_system

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> float:
        machine, mine = self._snapshot()
        return max(0.0, (machine - self._start[0]) - (mine - self._start[1]))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def build_model(workdir: Path, shape: dict[str, int], vocab_size: int = 2048) -> Path:
    """A random-weight MistralForCausalLM with the embedded tokenizer, saved as ``workdir/hf``."""
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig

    from moxin_core.export import save_model
    from moxin_core.tokenizer import load_tokenizer
    from moxin_core.training.blocks import ensure_embedded_tokenizer

    tokenizer_dir = ensure_embedded_tokenizer(workdir / "tokenizer", vocab_size)
    tokenizer = load_tokenizer(tokenizer_dir)
    config = MistralConfig(vocab_size=len(tokenizer), max_position_embeddings=2048,
                           sliding_window=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                           tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, **shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return save_model(model, tokenizer, workdir / "hf", tokenizer_dir)


def describe_model(hf: Path) -> dict[str, Any]:
    """Parameter count, safetensors size and largest tensor of the HF folder ``hf``."""
    from safetensors import safe_open

    sizes = {}
    with safe_open(hf / "model.safetensors", framework="pt") as handle:
        for name in handle.keys():
            shape = handle.get_slice(name).get_shape()
            count = 1
            for dim in shape:
                count *= dim
            sizes[name] = count
    largest = max(sizes, key=sizes.get)
    return {"parameters": sum(sizes.values()),
            "safetensors_bytes": (hf / "model.safetensors").stat().st_size,
            "largest_tensor": largest, "largest_tensor_bytes": sizes[largest] * 4,
            "config": json.loads((hf / "config.json").read_text())}


# --------------------------------------------------------------------------------------------
# Export in a child process
# --------------------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``: resident now, ``VmHWM``: its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def child_export(hf: str, out: str, outtype: str, result: str) -> None:
    """Runs in the child: imports, then the export alone, timed and with its own memory peak.

    The peak-RSS mark is reset (``/proc/self/clear_refs``, Linux >= 4.0) after the imports, so
    ``VmHWM`` afterwards is the peak during the export, not the imports' transient peak.
    """
    # everything the export imports, imported first: the timed call is the writer
    import gguf  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import moxin_core.export  # noqa: F401  (resolve_model_folder; pulls in transformers)
    from moxin_plugin_gguf import writer  # noqa: F401
    from moxin_plugin_gguf.export import export_gguf

    imports_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    export_gguf(hf, out, force=True, outtype=outtype, verify=False)
    seconds = time.perf_counter() - start
    Path(result).write_text(json.dumps({
        "seconds": seconds, "rss_before_kb": before, "imports_peak_kb": imports_peak,
        "export_peak_kb": _status_kb("VmHWM"), "peak_was_reset": reset}))


def measure_export(hf: Path, out: Path, outtype: str, log: Path) -> dict[str, Any]:
    """One export in a fresh process: seconds and memory (kB) of the export and the process."""
    result = log.with_suffix(".json")
    command = [sys.executable, __file__, "--child-export", str(hf), str(out), outtype,
               str(result)]
    wall = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - wall
    if process.returncode != 0:
        raise SystemExit(f"export {outtype} failed (exit {process.returncode}):\n"
                         + log.read_text()[-3000:])
    inner = json.loads(result.read_text())
    return {**inner, "process_seconds": wall, "process_maxrss_kb": usage.ru_maxrss,
            "file_bytes": out.stat().st_size}


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


class HFGenerator:
    """transformers ``generate``, fp32, greedy, exactly ``new_tokens`` new tokens."""

    def __init__(self, hf: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(hf)
        self.model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
        self.load_seconds = time.perf_counter() - start
        self.torch = torch

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def run(self, ids: list[int], new_tokens: int) -> float:
        """Seconds for one ``generate`` call."""
        torch = self.torch
        inputs = torch.tensor([ids])
        start = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=None,
                top_p=None, top_k=None, pad_token_id=self.tokenizer.eos_token_id)
        seconds = time.perf_counter() - start
        assert output.shape[1] - inputs.shape[1] == new_tokens, output.shape
        return seconds


class LlamaGenerator:
    """``LlamaCppRuntime.generate_ids``: greedy, EOS ignored, exactly ``new_tokens`` tokens."""

    def __init__(self, path: Path, threads: int) -> None:
        from moxin_plugin_gguf.runtime import LlamaCppRuntime

        start = time.perf_counter()
        self.runtime = LlamaCppRuntime(str(path), n_threads=threads)
        self.load_seconds = time.perf_counter() - start

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.runtime.tokenize(prompt, add_bos=True)

    def run(self, ids: list[int], new_tokens: int) -> float:
        """Seconds for one generation (the KV cache is cleared first: no prompt reuse)."""
        self.runtime.llama.reset()
        start = time.perf_counter()
        got = self.runtime.generate_ids(ids, new_tokens, stop_ids=())
        seconds = time.perf_counter() - start
        assert len(got) == new_tokens, len(got)
        return seconds


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _runs(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} (" + ", ".join(
        format(v, fmt) for v in values) + ")"


def print_report(report: dict[str, Any]) -> None:
    model = report["model"]
    config = model["config"]
    print(f"\nModel: MistralForCausalLM (random weights), {config['num_hidden_layers']} layers, "
          f"hidden {config['hidden_size']}, heads {config['num_attention_heads']}/"
          f"{config['num_key_value_heads']}, FFN {config['intermediate_size']}, vocab "
          f"{config['vocab_size']}: {model['parameters']:,} parameters; model.safetensors "
          f"{model['safetensors_bytes'] / MB:.1f} MB (f32); largest tensor "
          f"{model['largest_tensor']} "
          f"{model['largest_tensor_bytes'] / MB:.1f} MB")
    print(f"\nExport (verify=False), {report['repeats']} runs, each in a fresh process; "
          "median (runs); memory in MB (RSS)")
    print(f"{'outtype':<8}{'file MB':>8}  {'export s':<24}{'process s':>9}{'before':>8}  "
          f"{'peak during export':<22}{'added':>6}{'added/model':>12}{'process peak':>13}")
    for outtype, row in report["export"].items():
        runs = row["runs"]
        peaks = [r["export_peak_kb"] / 1e3 for r in runs]
        before = statistics.median(r["rss_before_kb"] / 1e3 for r in runs)
        added = statistics.median(peaks) - before
        print(f"{outtype:<8}{row['file_bytes'] / MB:>8.1f}  "
              f"{_runs([r['seconds'] for r in runs], '.2f'):<24}"
              f"{statistics.median(r['process_seconds'] for r in runs):>9.1f}{before:>8.0f}  "
              f"{_runs(peaks, '.0f'):<22}{added:>6.0f}"
              f"{added * MB / model['safetensors_bytes']:>12.0%}"
              f"{statistics.median(r['process_maxrss_kb'] / 1e3 for r in runs):>13.0f}")
    print("  other processes' CPU seconds per run: " + "; ".join(
        f"{outtype} " + ", ".join(f"{r['other_cpu_seconds']:.1f}" for r in row["runs"])
        for outtype, row in report["export"].items()))
    print("  before: resident after the imports; peak during export: VmHWM, reset after the "
          "imports;\n  added = peak - before; process peak: the child's ru_maxrss from os.wait4 "
          "(imports included)")
    gen = report["generation"]
    print(f"\nGeneration: {gen['new_tokens']} new tokens after a {gen['prompt_tokens']}-token "
          f"prompt, greedy, {gen['threads']} threads; {report['repeats']} interleaved rounds "
          "after one warm-up; tok/s median (runs)")
    print(f"{'runtime':<34}{'weights':<18}{'tok/s':<30}{'load s':>8}")
    for row in gen["runtimes"].values():
        print(f"{row['runtime']:<34}{row['weights']:<18}"
              f"{_runs(row['tokens_per_second'], '.1f'):<30}"
              f"{row['load_seconds']:>8.2f}")
    print("  other processes' CPU seconds per round: "
          + ", ".join(f"{v:.1f}" for v in gen["other_cpu_seconds_per_round"]))
    ratio = gen["q8_0_over_hf"]
    print(f"llama.cpp q8_0 / transformers fp32: {ratio:.2f}x")
    print(f"Load average (1 min) before start: {report['load_average_start']:.2f}, at the end: "
          f"{report['load_average_end']:.2f} (this run itself adds up to ~1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a ~3 M-parameter model, 1 run, 16 new tokens (a smoke test)")
    ap.add_argument("--repeats", type=int, help="runs per export and generation (default 3; "
                    "quick 1)")
    ap.add_argument("--new-tokens", type=int, help="new tokens per generation (default 64; "
                    "quick 16)")
    ap.add_argument("--threads", type=int, help="threads for llama.cpp and torch (default: the "
                    "cores this process may use)")
    ap.add_argument("--workdir", type=Path, help="keep the model and the GGUF files here "
                    "(default: a temporary folder, removed)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--child-export", nargs=4, metavar=("HF", "OUT", "OUTTYPE", "RESULT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_export:
        child_export(*args.child_export)
        return

    import torch

    from moxin_plugin_gguf.runtime import default_threads

    repeats = args.repeats or (1 if args.quick else 3)
    new_tokens = args.new_tokens or (16 if args.quick else 64)
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    report: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "logical_cpus": os.cpu_count(), "threads": threads,
                    "python": platform.python_version(), "torch": torch.__version__},
        "repeats": repeats, "quick": args.quick, "load_average_start": os.getloadavg()[0]}
    if report["load_average_start"] > 0.5:
        print(f"Warning: load average {report['load_average_start']:.1f} before starting; "
              "another busy process slows both llama.cpp and torch several-fold on a small "
              "machine. Figures from a busy machine are not comparable.")

    temporary = None
    if args.workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix="moxin-gguf-bench-")
        workdir = Path(temporary.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        print("Building the model ...", flush=True)
        hf = build_model(workdir, QUICK_MODEL if args.quick else FULL_MODEL)
        report["model"] = describe_model(hf)

        report["export"] = {}
        others = OtherCPU()
        for outtype in ("f16", "q8_0"):
            out = workdir / f"model.{outtype}.gguf"
            runs = []
            for r in range(repeats):
                others.start()
                runs.append(measure_export(hf, out, outtype, workdir / f"export-{outtype}-{r}.log"))
                runs[-1]["other_cpu_seconds"] = others.stop()
                print(f"  export {outtype} run {r + 1}: {runs[-1]['seconds']:.2f} s, RSS "
                      f"{runs[-1]['rss_before_kb'] / 1e3:.0f} -> peak "
                      f"{runs[-1]['export_peak_kb'] / 1e3:.0f} MB; other processes "
                      f"{runs[-1]['other_cpu_seconds']:.1f} CPU s during the "
                      f"{runs[-1]['process_seconds']:.1f} s process", flush=True)
            report["export"][outtype] = {"file_bytes": runs[-1]["file_bytes"], "runs": runs}

        # label -> (generator, runtime, weights)
        generators: dict[str, tuple[Any, str, str]] = {
            "q8_0": (LlamaGenerator(workdir / "model.q8_0.gguf", threads),
                     "llama.cpp (LlamaCppRuntime)", "q8_0 GGUF"),
            "f16": (LlamaGenerator(workdir / "model.f16.gguf", threads),
                    "llama.cpp (LlamaCppRuntime)", "f16 GGUF"),
            "hf": (HFGenerator(hf), "transformers generate", "fp32 safetensors"),
        }
        prompts = {label: g.prompt_ids(PROMPT) for label, (g, _, _) in generators.items()}
        if len({tuple(ids) for ids in prompts.values()}) != 1:
            raise SystemExit(f"The runtimes tokenise the prompt differently: {prompts}")
        ids = prompts["hf"]
        seconds: dict[str, list[float]] = {label: [] for label in generators}
        for generator, _, _ in generators.values():
            generator.run(ids, min(8, new_tokens))  # warm-up
        other_cpu: list[float] = []
        for r in range(repeats):
            others.start()
            started = time.perf_counter()
            for label, (generator, _, _) in generators.items():
                seconds[label].append(generator.run(ids, new_tokens))
            other_cpu.append(others.stop())
            print(f"  generation round {r + 1}: " + ", ".join(
                f"{runtime.split()[0]} {weights} {new_tokens / seconds[label][-1]:.1f} tok/s"
                for label, (_, runtime, weights) in generators.items())
                + f"; other processes {other_cpu[-1]:.1f} CPU s in "
                f"{time.perf_counter() - started:.1f} s", flush=True)
        rows = {label: {"runtime": runtime, "weights": weights, "load_seconds": g.load_seconds,
                        "tokens_per_second": [new_tokens / s for s in seconds[label]]}
                for label, (g, runtime, weights) in generators.items()}
        medians = {label: statistics.median(row["tokens_per_second"])
                   for label, row in rows.items()}
        report["generation"] = {"prompt_tokens": len(ids), "new_tokens": new_tokens,
                                "threads": threads, "runtimes": rows,
                                "other_cpu_seconds_per_round": other_cpu,
                                "q8_0_over_hf": medians["q8_0"] / medians["hf"]}
        for generator, _, _ in generators.values():
            if isinstance(generator, LlamaGenerator):
                generator.runtime.close()
    finally:
        if temporary is not None:
            temporary.cleanup()

    report["load_average_end"] = os.getloadavg()[0]
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nWrote {args.json}")


if __name__ == "__main__":
    main()
