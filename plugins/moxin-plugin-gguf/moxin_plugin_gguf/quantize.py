"""K-quants through llama.cpp's own quantiser (llama-cpp-python's low-level binding).

gguf-py has no K-quant *quantiser* (only dequantisers), so a K-quant export writes an f16 GGUF
first and hands it to ``llama_model_quantize``, the same code path as llama.cpp's
``llama-quantize`` tool. llama.cpp picks per-tensor types for the ``_M`` mixes (e.g. q6_k for
parts of ``attn_v``/``ffn_down`` in q4_k_m) and falls back to another type for tensors whose rows
are not a multiple of the 256-wide K-quant super-block.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moxin_core.api import MoxinError

#: outtype -> name of the ``llama_ftype`` constant in ``llama_cpp``
K_QUANTS = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}


@contextmanager
def quiet_llama_logs() -> Iterator[None]:
    """Show only llama.cpp errors meanwhile (it otherwise logs every tensor to stderr).

    llama-cpp-python routes llama.cpp's C log through the ``llama-cpp-python`` Python logger, so
    raising that logger's level is enough; it is restored afterwards.
    """
    import llama_cpp  # noqa: F401  (importing it installs the log callback)

    logger = logging.getLogger("llama-cpp-python")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def quantize_gguf(source: Path, target: Path, outtype: str, threads: int | None = None) -> None:
    """Quantise the f16/f32 GGUF ``source`` into ``target`` with llama.cpp's ``outtype`` mix."""
    try:
        import llama_cpp
    except ImportError:
        raise MoxinError(f"Output type {outtype!r} needs llama-cpp-python (pip install "
                         "'llama-cpp-python>=0.3'); f32/f16/bf16/q8_0 do not.") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, K_QUANTS[outtype])
    params.nthread = threads or os.cpu_count() or 1
    with quiet_llama_logs():
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                                ctypes.byref(params))
    if status != 0:
        raise MoxinError(f"llama.cpp could not quantise {source} to {outtype} (status {status}); "
                         "try f16 or q8_0, or run llama.cpp's llama-quantize on an f16 export "
                         "to see its log.")
