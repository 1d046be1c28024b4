"""``moxin generate`` and ``moxin chat``: text from any model a runtime can load
(``moxin_core.runtime.generate`` and ``chat``)."""

from __future__ import annotations

import argparse
from typing import Any

from moxin_core.commands.base import Command
from moxin_core.runtime import chat, generate


class GenerateCommand(Command):
    help = "complete a prompt"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="stage folder, model folder, hub id or .gguf file")
        parser.add_argument("--prompt", required=True)
        parser.add_argument("--max-new-tokens", type=int, default=64)
        parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        parser.add_argument("--chat", action="store_true", help="send the prompt as a chat turn")
        parser.add_argument("--image", help="a picture for a vision-language model")
        parser.add_argument("--runtime",
                            help="runtime name (default: the first that accepts MODEL)")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        print(generate(args.model, args.prompt, args.max_new_tokens, args.temperature,
                       args.chat, args.runtime, registry, image=args.image))
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
        parser.add_argument("--image", help="the picture the conversation is about "
                                            "(a vision-language model)")
        parser.add_argument("--runtime",
                            help="runtime name (default: the first that accepts MODEL)")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        chat(args.model, args.messages, args.system, args.max_new_tokens, args.temperature,
             args.runtime, registry=registry, image=args.image)
        return 0
