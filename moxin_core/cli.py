"""The ``moxin`` command line. Each verb is a thin call into a typed function."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moxin_core.errors import MoxinError


def _registry():
    from moxin_core.plugins import Registry

    return Registry()


# ----------------------------------------------------------------------------- listing verbs


def list_plugins() -> list[dict[str, Any]]:
    from moxin_core.plugins import describe_plugins, get_plugin_manager

    return describe_plugins(get_plugin_manager())


def list_models() -> list[dict[str, Any]]:
    from moxin_core.presets import count_parameters

    registry = _registry()
    entries = []
    for name, factory in registry.category("models").items():
        config = factory()
        entries.append({"name": name, "parameters": count_parameters(config),
                        "config": config.to_dict()})
    return entries


def list_variants() -> list[dict[str, Any]]:
    registry = _registry()
    entries = []
    for name, factory in registry.category("variants").items():
        variant = factory()
        entries.append({"name": name, "description": variant.description,
                        "tokenizer": variant.tokenizer,
                        "stages": [stage.summary() for stage in variant.stages]})
    return entries


def _print_plugins(entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        status = f"FAILED: {entry['error']}" if entry["error"] else "ok"
        print(f"{entry['name']}  ({entry['distribution']} {entry['version']})  {status}")
        for category, names in entry["provides"].items():
            print(f"    {category}: {', '.join(names)}")
        others = [h for h in entry["hooks"] if not any(h.endswith(c) for c in entry["provides"])]
        if others:
            print(f"    hooks: {', '.join(others)}")


def _print_models(entries: list[dict[str, Any]]) -> None:
    print(f"{'name':<14} {'parameters':>15}  layers  hidden  heads/kv  vocab  max_pos")
    for e in entries:
        c = e["config"]
        print(f"{e['name']:<14} {e['parameters']:>15,}  {c.get('num_hidden_layers', '?'):>6}  "
              f"{c.get('hidden_size', '?'):>6}  {c.get('num_attention_heads', '?'):>5}/"
              f"{c.get('num_key_value_heads', '?'):<2}  {c.get('vocab_size', '?'):>5}  "
              f"{c.get('max_position_embeddings', '?')}")


def _print_variants(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        print(f"{e['name']}: {e['description']}")
        for i, s in enumerate(e["stages"], 1):
            hp = s["hyper_parameters"]
            sources = ", ".join(f"{d['source']}({d.get('path', d.get('seed', ''))})x{d['weight']}"
                                for d in s["data_sources"])
            print(f"  {i}. {s['name']}: {s['objective']} from {s['model']} on {sources}; "
                  f"seq_len {hp['seq_len']}, batch {hp['global_batch']}, lr {hp['lr']}, "
                  f"{hp['max_steps']} steps")


# ----------------------------------------------------------------------------- tokenizer


def tokenizer_train(corpus: Sequence[str], vocab_size: int, out: str,
                    text_field: str = "text") -> Path:
    """Train a tokenizer on files/globs, or on the embedded corpus (``embedded``)."""
    from moxin_core.data.sources import EmbeddedCorpus, Files
    from moxin_core.tokenizer import train_tokenizer

    sources = [EmbeddedCorpus() if spec == "embedded" else Files(spec, text_field=text_field)
               for spec in corpus]  # built up-front: a bad path fails before training starts

    def texts():
        for source in sources:
            for record, _ in source.iter_from(None):
                yield record["text"]

    return train_tokenizer(texts(), vocab_size, out)


# ----------------------------------------------------------------------------- generate


def generate(model: str, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
             chat: bool = False, runtime: str | None = None) -> str:
    """Complete ``prompt`` (or answer it as a chat turn) with any model a runtime can load."""
    from moxin_core.runtime import load_runtime

    _check_generation(max_new_tokens, temperature)
    engine = load_runtime(model, runtime=runtime)
    if chat:
        return engine.chat([{"role": "user", "content": prompt}], max_new_tokens, temperature)
    return engine.complete(prompt, max_new_tokens, temperature)


def _check_generation(max_new_tokens: int, temperature: float) -> None:
    if max_new_tokens <= 0:
        raise MoxinError(f"--max-new-tokens must be positive, got {max_new_tokens}.")
    if temperature < 0:
        raise MoxinError(f"--temperature must be >= 0 (0 = greedy), got {temperature}.")


def chat(model: str, messages: Sequence[str] = (), system: str | None = None,
         max_new_tokens: int = 256, temperature: float = 0.0, runtime: str | None = None,
         stdin: Any = None, stdout: Any = None, registry: Any = None) -> list[dict[str, str]]:
    """Talk to ``model`` under its chat template; returns the conversation.

    With ``messages`` each one is sent as a user turn in order and the replies are printed;
    without, turns are read from ``stdin`` (``/reset`` starts over, ``/exit`` or end of input
    stops).
    """
    from moxin_core.runtime import load_runtime

    _check_generation(max_new_tokens, temperature)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    engine = load_runtime(model, registry, runtime)
    start = [{"role": "system", "content": system}] if system else []
    conversation = list(start)
    interactive = not messages
    if interactive and stdin.isatty():
        print(f"Chatting with {model} ({engine.name}); /reset clears the history, /exit quits.",
              file=stdout)

    def turns():
        yield from messages
        while interactive:
            if stdin.isatty():
                print("you> ", end="", file=stdout, flush=True)
            line = stdin.readline()
            if not line:
                return
            yield line.rstrip("\n")

    for text in turns():
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            conversation = list(start)
            continue
        if not text.strip():
            continue
        conversation.append({"role": "user", "content": text})
        reply = engine.chat(conversation, max_new_tokens, temperature)
        conversation.append({"role": "assistant", "content": reply})
        print(f"assistant> {reply}" if interactive or len(messages) > 1 else reply, file=stdout,
              flush=True)
    return conversation


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: yaml(v)}`` for exporter options."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MoxinError(f"--option {item!r}: expected KEY=VALUE, e.g. --option outtype=q8_0.")
        options[key.strip()] = yaml.safe_load(value) if value else ""
    return options


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moxin", description="Train, export and run the Moxin "
                                     "model family with plugins.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    for verb, helptext in (("plugins", "list installed plugins and what they provide"),
                           ("models", "list model presets with exact parameter counts"),
                           ("variants", "list variants and their stages")):
        p = sub.add_parser(verb, help=helptext)
        p.add_argument("--json", action="store_true", help="print JSON")

    tok = sub.add_parser("tokenizer", help="tokenizer tools")
    tok_sub = tok.add_subparsers(dest="tokenizer_verb", required=True, metavar="ACTION")
    train_tok = tok_sub.add_parser("train", help="train a SentencePiece BPE tokenizer")
    train_tok.add_argument("--corpus", nargs="+", required=True,
                           help="text/JSONL/Parquet files or globs, or 'embedded'")
    train_tok.add_argument("--vocab-size", type=int, required=True)
    train_tok.add_argument("--out", required=True)
    train_tok.add_argument("--text-field", default="text")

    train = sub.add_parser("train", help="run a variant's stages")
    train.add_argument("variant")
    train.add_argument("--out", required=True, help="run folder (one subfolder per stage)")
    train.add_argument("--stage", help="run only this stage")
    train.add_argument("--max-steps", type=int, help="override max_steps of every stage")
    train.add_argument("--config", help="YAML file of settings")
    train.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting (KEY or STAGE.KEY); repeatable")
    train.add_argument("--resume", action="store_true",
                       help="continue from the last checkpoint in --out")

    export = sub.add_parser("export", help="export a trained model")
    export.add_argument("model", help="stage folder or HF folder")
    export.add_argument("--format", default="hf")
    export.add_argument("--out", required=True)
    export.add_argument("--force", action="store_true", help="replace an existing output")
    export.add_argument("--option", dest="options", action="append", default=[],
                        metavar="KEY=VALUE", help="exporter option, e.g. --option outtype=q8_0")

    demo = sub.add_parser("demo", help="tokenizer, tiny pretraining, export and a sample")
    demo.add_argument("--out", default="runs/demo", help="run folder (replaced)")

    gen = sub.add_parser("generate", help="complete a prompt")
    gen.add_argument("model", help="stage folder, HF folder, hub id or .gguf file")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--chat", action="store_true", help="send the prompt as a chat turn")
    gen.add_argument("--runtime", help="runtime name (default: the first that accepts MODEL)")

    talk = sub.add_parser("chat", help="talk to a model under its chat template")
    talk.add_argument("model", help="stage folder, HF folder, hub id or .gguf file")
    talk.add_argument("--message", dest="messages", action="append", default=[],
                      help="a user turn (repeatable); without it, turns are read from stdin")
    talk.add_argument("--system", help="system prompt")
    talk.add_argument("--max-new-tokens", type=int, default=256)
    talk.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    talk.add_argument("--runtime", help="runtime name (default: the first that accepts MODEL)")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.verb in ("plugins", "models", "variants"):
        entries = {"plugins": list_plugins, "models": list_models, "variants": list_variants}[args.verb]()
        if args.json:
            print(json.dumps(entries, indent=2, default=str))
        else:
            {"plugins": _print_plugins, "models": _print_models,
             "variants": _print_variants}[args.verb](entries)
        return 0
    if args.verb == "tokenizer":
        out = tokenizer_train(args.corpus, args.vocab_size, args.out, args.text_field)
        print(f"Tokenizer written to {out}")
        return 0
    if args.verb == "train":
        from moxin_core.train import train_variant

        results = train_variant(args.variant, args.out, stage=args.stage, max_steps=args.max_steps,
                                config=args.config, sets=args.sets, resume=args.resume)
        for r in results:
            note = " (already complete)" if r.skipped else ""
            loss = (f"loss {r.first_loss:.3f} -> {r.last_loss:.3f}" if r.first_loss is not None
                    else "no loss logged")
            print(f"stage {r.name}{note}: {r.steps} steps, {loss}, "
                  f"{r.tokens_per_second:,.0f} tokens/s -> {r.out_dir}")
            skipped = {k: v for k, v in (r.data_stats or {}).items()
                       if v and k.startswith(("skipped", "dropped", "truncated"))}
            if skipped:
                print("    data: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                               for k, v in skipped.items()))
            for name, scores in r.evals.items():
                print(f"    {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
        return 0
    if args.verb == "export":
        registry = _registry()
        exporter = registry.get("exporters", args.format)()
        options = parse_options(args.options)
        try:
            path = exporter(args.model, args.out, force=args.force, **options)
        except TypeError as exc:
            if "unexpected keyword" not in str(exc):
                raise
            raise MoxinError(f"Exporter {args.format!r} does not take option(s) "
                             f"{', '.join(options)} ({exc}).") from None
        print(f"Exported {args.model} as {args.format} to {path}")
        return 0
    if args.verb == "demo":
        from moxin_core.demo import run_demo

        run_demo(args.out)
        return 0
    if args.verb == "generate":
        print(generate(args.model, args.prompt, args.max_new_tokens, args.temperature, args.chat,
                       args.runtime))
        return 0
    if args.verb == "chat":
        chat(args.model, args.messages, args.system, args.max_new_tokens, args.temperature,
             args.runtime)
        return 0
    raise AssertionError(args.verb)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except MoxinError as exc:
        print(f"moxin: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moxin: interrupted", file=sys.stderr)
        return 130
    except FloatingPointError as exc:
        print(f"moxin: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
