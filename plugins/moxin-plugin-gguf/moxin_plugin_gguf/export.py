"""``export_gguf``: the ``gguf`` exporter the core calls (``moxin export MODEL --format gguf``).

The file is built under a temporary name in the output folder and moved onto ``out`` with
``os.replace`` only after it was written (and quantised, and verified): a crash or a failed parity
check never leaves a half-written or unverified file at ``out``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from moxin_core.api import MoxinError

from moxin_plugin_gguf.quantize import K_QUANTS
from moxin_plugin_gguf.writer import DIRECT_OUTTYPES, SafetensorsCheckpoint

OUTTYPES = DIRECT_OUTTYPES + tuple(K_QUANTS)
#: models smaller than this are verified unless ``verify=False`` (an fp32 HF forward pass of a
#: larger one costs minutes and tens of GB)
VERIFY_BY_DEFAULT_BELOW = 1_000_000_000


def verify_report_path(out: Path) -> Path:
    """Where the parity report of ``out`` goes: ``<out>.verify.json``."""
    return out.with_name(out.name + ".verify.json")


def _temp_path(out: Path, tag: str) -> Path:
    """A fresh name next to ``out`` (same file system, so ``os.replace`` is atomic).

    Not ``mkstemp``: its 0600 mode would carry over to the exported file.
    """
    return out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.{tag}.partial")


def export_gguf(model_path: str | Path, out: str | Path, force: bool = False,
                outtype: str = "f16", verify: bool | None = None, **options: Any) -> Path:
    """Write the model at ``model_path`` as a llama.cpp GGUF file ``out``.

    Args:
        model_path: an HF folder (config.json, model.safetensors, tokenizer.model, ...) or a
            finished moxin stage folder (its ``hf/`` is used).
        out: the ``.gguf`` file to write; its parity report goes to ``<out>.verify.json``.
        force: replace an existing ``out``.
        outtype: ``f32``, ``f16``, ``bf16``, ``q8_0`` (written by gguf-py) or ``q4_k_m``,
            ``q5_k_m``, ``q6_k`` (f16 written by gguf-py, then quantised by llama.cpp).
        verify: compare tokenisation and logits with the HF model (see ``verify``); None: only
            for models under 1e9 parameters.

    Returns ``out``. Raises MoxinError for unusable inputs or a failed parity check (then no
    file is left at ``out``).
    """
    from moxin_core.api import resolve_model_folder, stage_of, write_openness_report

    if options:
        raise MoxinError(f"Unknown gguf export option(s) {sorted(options)}; known: outtype, "
                         "verify, force.")
    outtype = str(outtype).lower()
    if outtype not in OUTTYPES:
        raise MoxinError(f"Unknown GGUF output type {outtype!r}; choose one of "
                         f"{', '.join(OUTTYPES)}.")
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise MoxinError(f"Output {str(out)!r} exists; pass --force (force=True) to replace it.")
    if out.is_dir():
        raise MoxinError(f"Output {str(out)!r} is a folder; give a file name such as model.gguf.")
    folder = resolve_model_folder(model_path)
    out.parent.mkdir(parents=True, exist_ok=True)

    n_params = sum(int(_numel(s)) for s in SafetensorsCheckpoint(folder).shapes().values())
    if verify is None:
        verify = n_params < VERIFY_BY_DEFAULT_BELOW

    from moxin_plugin_gguf.writer import write_gguf

    base_type = outtype if outtype in DIRECT_OUTTYPES else "f16"
    written = _temp_path(out, base_type)
    final = written
    try:
        write_gguf(folder, written, base_type)
        if outtype in K_QUANTS:
            from moxin_plugin_gguf.quantize import quantize_gguf

            final = _temp_path(out, outtype)
            quantize_gguf(written, final, outtype)
            written.unlink()
        if verify:
            _verify(folder, final, out, outtype)
        os.replace(final, out)
        write_openness_report(out, stage_of(model_path))
    finally:
        for leftover in (written, final):
            if leftover.exists():
                leftover.unlink()
    return out


def _verify(folder: Path, candidate: Path, out: Path, outtype: str) -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise MoxinError("The GGUF parity check needs llama-cpp-python (pip install "
                         "'llama-cpp-python>=0.3'); or export with verify=False.") from None
    from moxin_plugin_gguf.verify import verify_gguf

    report = verify_gguf(folder, candidate, outtype)
    report_path = verify_report_path(out)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    if not report["passed"]:
        raise MoxinError(f"GGUF parity check failed for {out} ({outtype}), so it was not "
                         f"written (a file already there is left as it was). Details in "
                         f"{report_path}:\n  - " +
                         "\n  - ".join(report["failures"]))


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
