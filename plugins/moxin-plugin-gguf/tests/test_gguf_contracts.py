"""The ``gguf`` exporter against moxin_core.testing's exporter contracts (writes ``out``,
deterministic bytes, refuses to overwrite without ``force``, replaces with it, unknown options are
MoxinError), on the core's tiny model folder fixture."""

from __future__ import annotations

import pytest

from moxin_core.testing import check_exporter

pytest.importorskip("gguf")


@pytest.mark.parametrize("options", [{"outtype": "f16", "verify": False},
                                     {"outtype": "q8_0", "verify": False}])
def test_the_gguf_exporter_keeps_the_exporter_contracts(options, moxin_registry,
                                                        moxin_model_folder, tmp_path):
    out = check_exporter(moxin_registry.get("exporters", "gguf"), moxin_model_folder,
                         tmp_path / "model.gguf", **options)
    assert out.read_bytes()[:4] == b"GGUF"


def test_a_verified_gguf_export_keeps_the_contracts(moxin_registry, moxin_model_folder,
                                                    tmp_path):
    pytest.importorskip("llama_cpp")
    out = check_exporter(moxin_registry.get("exporters", "gguf"), moxin_model_folder,
                         tmp_path / "model.gguf", outtype="f32", verify=True)
    assert (tmp_path / "model.gguf.verify.json").is_file() and out.stat().st_size > 0
