"""``moxin plugins``, ``moxin models``, ``moxin variants``: what is installed, as text or JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

from moxin_core.commands.base import Command


def list_plugins(registry: Any) -> list[dict[str, Any]]:
    from moxin_core.plugins import describe_plugins

    return describe_plugins(registry.pm)


def list_models(registry: Any) -> list[dict[str, Any]]:
    from moxin_core.models.family import resolve_model

    entries = []
    for name in registry.names("models"):
        ref = resolve_model(registry, name)
        described = ref.family.describe(ref.preset.config)
        entries.append({"name": name, "family": ref.family.name,
                        "description": ref.preset.description, **described})
    return entries


def list_variants(registry: Any) -> list[dict[str, Any]]:
    entries = []
    for name, factory in registry.category("variants").items():
        variant = factory()
        entries.append({"name": name, "description": variant.description,
                        "tokenizer": variant.tokenizer,
                        "stages": [stage.summary() for stage in variant.stages]})
    return entries


def print_plugins(entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        status = f"FAILED: {entry['error']}" if entry["error"] else "ok"
        print(f"{entry['name']}  ({entry['distribution']} {entry['version']})  {status}")
        for category, names in entry["provides"].items():
            print(f"    {category}: {', '.join(names)}")
        others = [h for h in entry["hooks"] if not any(h.endswith(c) for c in entry["provides"])]
        if others:
            print(f"    hooks: {', '.join(others)}")


def print_models(entries: list[dict[str, Any]]) -> None:
    print(f"{'name':<14} {'family':<10} {'parameters':>15}  layers  hidden  heads/kv  vocab  "
          "max_pos")
    for e in entries:
        c = e["config"]
        # a composite preset built on a model reference counts its parameters once built
        parameters = f"{e['parameters']:,}" if e["parameters"] is not None else "?"
        print(f"{e['name']:<14} {e['family']:<10} {parameters:>15}  "
              f"{c.get('num_hidden_layers', '?'):>6}  {c.get('hidden_size', '?'):>6}  "
              f"{c.get('num_attention_heads', '?'):>5}/{c.get('num_key_value_heads', '?'):<2}  "
              f"{c.get('vocab_size', '?'):>5}  {e.get('max_length') or '?'}")


def print_variants(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        print(f"{e['name']}: {e['description']}")
        for i, s in enumerate(e["stages"], 1):
            hp = s["hyper_parameters"]
            sources = ", ".join(f"{d['source']}({d.get('path', d.get('seed', ''))})x{d['weight']}"
                                for d in s["data_sources"])
            options = ", ".join(f"{k}={v}" for k, v in s["objective_options"].items())
            objective = f"{s['objective']}({options})" if options else s["objective"]
            print(f"  {i}. {s['name']}: {objective} from {s['model']} on {sources}; "
                  f"seq_len {hp['seq_len']}, batch {hp['global_batch']}, lr {hp['lr']}, "
                  f"{hp['max_steps']} steps")


class _Listing(Command):
    lister: Any = None
    printer: Any = None

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        entries = type(self).lister(registry)
        if args.json:
            print(json.dumps(entries, indent=2, default=str))
        else:
            type(self).printer(entries)
        return 0


class PluginsCommand(_Listing):
    help = "list installed plugins, what they provide, and load errors"
    lister, printer = staticmethod(list_plugins), staticmethod(print_plugins)


class ModelsCommand(_Listing):
    help = "list model presets with their family and exact parameter counts"
    lister, printer = staticmethod(list_models), staticmethod(print_models)


class VariantsCommand(_Listing):
    help = "list variants, their stages and objective options"
    lister, printer = staticmethod(list_variants), staticmethod(print_variants)
