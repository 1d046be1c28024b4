"""The hook specs are the reference: documented, tested, and docs/hooks.md matches them."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from moxin_core import docs_gen, hookspecs

TESTS = Path(__file__).parent
SPECS = [name for _, name, _ in docs_gen.hook_specs()]


def test_every_category_hook_is_a_spec():
    from moxin_core.plugins import CATEGORIES

    assert set(CATEGORIES.values()) <= set(SPECS)
    assert "moxin_callbacks" in SPECS


@pytest.mark.parametrize("name", SPECS)
def test_spec_has_a_full_docstring_and_types(name):
    function = getattr(hookspecs, name)
    doc = inspect.getdoc(function) or ""
    assert len(doc.split()) >= 15, f"{name} needs a docstring that says when/what/returns"
    assert "Returns" in doc, f"{name}: document the return value"
    signature = inspect.signature(function)
    assert signature.return_annotation is not inspect.Signature.empty, name
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, (name, parameter.name)
        assert parameter.name in doc, f"{name}: document argument {parameter.name}"


@pytest.mark.parametrize("name", SPECS)
def test_spec_is_exercised_by_a_test(name):
    others = [p for p in TESTS.rglob("test_*.py") if p.name != Path(__file__).name]
    plugin_tests = list(Path(__file__).parents[1].glob("plugins/*/tests/test_*.py"))
    assert any(name in p.read_text() for p in others + plugin_tests), \
        f"no test mentions hook {name}"


def test_docs_hooks_md_is_up_to_date():
    assert docs_gen.DOC_PATH.read_text() == docs_gen.render(), \
        "docs/hooks.md is stale: run `make docs` (python -m moxin_core.docs_gen)"
