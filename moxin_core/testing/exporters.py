"""The contract check of exporters (``moxin_exporters``): what ``moxin export`` relies on."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moxin_core.errors import MoxinError
from moxin_core.testing.contracts import ContractError, component_name, file_digests

#: an option no exporter takes
UNKNOWN_OPTION = "no_such_option"


def check_exporter(factory: Callable[[], Callable[..., Path]], model_path: str | Path,
                   out: str | Path, registry: Any = None, **options: Any) -> Path:
    """The contracts of the exporter ``factory()`` on the model at ``model_path`` (a model or
    stage folder), called as ``moxin export`` calls it (string paths; ``registry`` when the
    exporter takes one) with ``options``. ``out`` is a path that does not exist yet (a file or a
    folder, as the exporter writes); the check also writes beside it (``<out>-again``,
    ``<out>-unknown-option``, with ``out``'s suffix):

    * **writes out**: ``export(model_path, out, **options)`` returns a ``pathlib.Path`` that
      exists, and ``out`` exists;
    * **deterministic**: a second export of the same model gives byte-identical files (the
      built-in ``hf`` and ``gguf`` exporters do; ``moxin reproduce`` compares checksums);
    * **refuses to overwrite**: exporting onto the existing ``out`` without ``force`` raises
      :class:`~moxin_core.MoxinError` and leaves ``out`` as it was;
    * **force replaces**: with ``force=True`` it writes over an existing ``out`` (the files
      there, replaced by stale bytes first, come back as a fresh export writes them);
    * **unknown options raise MoxinError**: an option the exporter does not take raises
      :class:`~moxin_core.MoxinError` (not ``TypeError``), before anything is written.

    Returns ``out``.
    """
    export = factory()
    name = component_name(export)
    out = Path(out)
    again = out.with_name(f"{out.stem}-again{out.suffix}")
    unknown = out.with_name(f"{out.stem}-unknown-option{out.suffix}")
    for path in (out, again, unknown):
        if path.exists():
            raise ValueError(f"check_exporter: {path} exists already; give `out` a new path "
                             "(under tmp_path).")
    if "registry" in inspect.signature(export).parameters:
        from moxin_core.plugins import Registry

        options = {**options, "registry": registry or Registry()}

    def run(target: Path, contract: str, **more: Any) -> Any:
        try:
            return export(str(model_path), str(target), **options, **more)
        except MoxinError:
            raise
        except Exception as error:
            raise ContractError(name, contract, f"export({str(model_path)!r}, {str(target)!r}"
                                f"{_shown(more)}) raised {type(error).__name__}: "
                                f"{error}") from error

    written = run(out, "writes out")
    if not isinstance(written, Path) or not written.exists() or not file_digests(out):
        raise ContractError(name, "writes out", f"export(..., {str(out)!r}) returned "
                            f"{written!r}; expected the pathlib.Path it wrote, with {out} "
                            "existing")
    first = file_digests(out)
    run(again, "deterministic")
    second = file_digests(again)
    if second != first:
        differ = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
        raise ContractError(name, "deterministic", f"two exports of the same model ({out} and "
                            f"{again.name}) differ" + ("" if differ == ["."] else
                                                      f" in {', '.join(differ)}"))

    try:
        run(out, "refuses to overwrite")
    except MoxinError:
        pass
    else:
        raise ContractError(name, "refuses to overwrite", f"exporting onto the existing {out} "
                            "without force=True succeeded; raise MoxinError (the user passes "
                            "--force to replace it)")
    if file_digests(out) != first:
        raise ContractError(name, "refuses to overwrite", f"the refused export changed {out}")

    _make_stale(out)
    try:
        replaced = run(out, "force replaces", force=True)
    except MoxinError as error:
        raise ContractError(name, "force replaces", f"export(..., force=True) onto the "
                            f"existing {out} raised MoxinError: {error}") from error
    if not isinstance(replaced, Path) or file_digests(out) != first:
        raise ContractError(name, "force replaces", f"export(..., force=True) left {out} "
                            "other than a fresh export writes it")

    try:
        run(unknown, "unknown options raise MoxinError", **{UNKNOWN_OPTION: True})
    except MoxinError:
        pass
    else:
        raise ContractError(name, "unknown options raise MoxinError", f"the option "
                            f"{UNKNOWN_OPTION}=True was accepted")
    if unknown.exists():
        raise ContractError(name, "unknown options raise MoxinError", f"it wrote {unknown} "
                            "before rejecting the option")
    return out


def _shown(options: dict[str, Any]) -> str:
    return "".join(f", {k}={v!r}" for k, v in options.items())


def _make_stale(out: Path) -> None:
    """Replace the bytes of every file of ``out`` (a file or a folder)."""
    for path in [out] if out.is_file() else [p for p in out.rglob("*") if p.is_file()]:
        path.write_bytes(b"stale output of an earlier export\n")
