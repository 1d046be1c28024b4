"""``moxin generate`` and ``moxin chat``: text from any model a runtime can load."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from moxin_core.commands.base import Command
from moxin_core.errors import MoxinError


def _check_generation(max_new_tokens: int, temperature: float) -> None:
    if max_new_tokens <= 0:
        raise MoxinError(f"--max-new-tokens must be positive, got {max_new_tokens}.")
    if temperature < 0:
        raise MoxinError(f"--temperature must be >= 0 (0 = greedy), got {temperature}.")


def generate(model: str, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
             chat: bool = False, runtime: str | None = None, registry: Any = None) -> str:
    """Complete ``prompt`` (or answer it as a chat turn) with any model a runtime can load."""
    from moxin_core.runtime import load_runtime

    _check_generation(max_new_tokens, temperature)
    engine = load_runtime(model, registry, runtime)
    if chat:
        return engine.chat([{"role": "user", "content": prompt}], max_new_tokens, temperature)
    return engine.complete(prompt, max_new_tokens, temperature)


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


class GenerateCommand(Command):
    help = "complete a prompt"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="stage folder, model folder, hub id or .gguf file")
        parser.add_argument("--prompt", required=True)
        parser.add_argument("--max-new-tokens", type=int, default=64)
        parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        parser.add_argument("--chat", action="store_true", help="send the prompt as a chat turn")
        parser.add_argument("--runtime",
                            help="runtime name (default: the first that accepts MODEL)")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        print(generate(args.model, args.prompt, args.max_new_tokens, args.temperature,
                       args.chat, args.runtime, registry))
        return 0


class ChatCommand(Command):
    help = "talk to a model under its chat template"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="stage folder, model folder, hub id or .gguf file")
        parser.add_argument("--message", dest="messages", action="append", default=[],
                            help="a user turn (repeatable); without it, turns are read from stdin")
        parser.add_argument("--system", help="system prompt")
        parser.add_argument("--max-new-tokens", type=int, default=256)
        parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        parser.add_argument("--runtime",
                            help="runtime name (default: the first that accepts MODEL)")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        chat(args.model, args.messages, args.system, args.max_new_tokens, args.temperature,
             args.runtime, registry=registry)
        return 0
