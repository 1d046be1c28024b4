"""Hook implementations of moxin-plugin-gguf: the ``gguf`` exporter and the ``llama.cpp`` runtime."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moxin_core.api import hookimpl


def _factory() -> Callable[..., Any]:
    # imported here so that listing plugins does not pay for numpy/gguf/llama.cpp imports
    from moxin_plugin_gguf.export import export_gguf

    return export_gguf


@hookimpl
def moxin_exporters() -> dict[str, Callable[[], Callable[..., Any]]]:
    """``gguf``: ``export_gguf(model_path, out, force=False, outtype="f16", verify=None)``."""
    return {"gguf": _factory}


@hookimpl
def moxin_runtimes() -> dict[str, type]:
    """``llama.cpp``: runs ``.gguf`` files (``moxin generate x.gguf``, ``moxin chat x.gguf``)."""
    # runtime.py imports llama_cpp and gguf only when a file is loaded
    from moxin_plugin_gguf.runtime import LlamaCppRuntime

    return {"llama.cpp": LlamaCppRuntime}
