"""Runtimes behind `moxin generate` / `moxin chat`: selection by path, the chat loop, bad input."""

from __future__ import annotations

import io

import pytest

from moxin_core import hookimpl
from moxin_core.runtime import chat
from moxin_core.errors import MoxinError
from moxin_core.plugins import Registry, get_plugin_manager
from moxin_core.runtime import Runtime, TransformersRuntime, check_messages, load_runtime


class EchoRuntime(Runtime):
    """Answers with the number of turns it saw and the last user message."""

    name = "echo"

    @classmethod
    def accepts(cls, model: str) -> bool:
        return model.endswith(".echo")

    def __init__(self, model: str) -> None:
        self.model = model

    def complete(self, prompt, max_new_tokens=64, temperature=0.0):
        return prompt[::-1]

    def chat(self, messages, max_new_tokens=256, temperature=0.0):
        check_messages(messages)
        return f"{len(messages)}:{messages[-1]['content']}"


class EchoPlugin:
    @hookimpl
    def moxin_runtimes(self):
        return {"echo": EchoRuntime}


@pytest.fixture
def echo_registry():
    pm = get_plugin_manager()
    pm.register_plugin(EchoPlugin(), name="echo", distribution="moxin-plugin-echo", version="0")
    return Registry(pm)


def test_plugin_runtime_wins_for_the_paths_it_accepts(echo_registry):
    assert isinstance(load_runtime("model.echo", echo_registry), EchoRuntime)
    assert "transformers" in echo_registry.names("runtimes")
    assert TransformersRuntime.accepts("runs/x/hf") and not TransformersRuntime.accepts("m.gguf")


def test_no_runtime_for_a_gguf_file_without_the_plugin():
    pm = get_plugin_manager(load_entry_points=False)
    from moxin_core import builtin

    pm.register_plugin(builtin, name="builtin", distribution="moxin-core", version="0")
    with pytest.raises(MoxinError, match="No runtime can load 'x.gguf'.*moxin-plugin-gguf"):
        load_runtime("x.gguf", Registry(pm))


def test_unknown_runtime_name_lists_known_ones(echo_registry):
    with pytest.raises(MoxinError, match="Unknown runtime 'vllm'.*echo.*transformers"):
        load_runtime("model.echo", echo_registry, runtime="vllm")


def test_chat_keeps_history_resets_and_stops(echo_registry):
    stdin = io.StringIO("hello\nagain\n/reset\nfresh\n\n/exit\nnever sent\n")
    out = io.StringIO()
    conversation = chat("m.echo", system="be brief", stdin=stdin, stdout=out,
                        registry=echo_registry)
    replies = [line for line in out.getvalue().splitlines() if line.startswith("assistant> ")]
    # system + user = 2 messages; then 4 (history kept); after /reset the history starts over
    assert replies == ["assistant> 2:hello", "assistant> 4:again", "assistant> 2:fresh"]
    assert conversation[0] == {"role": "system", "content": "be brief"}
    assert [m["content"] for m in conversation[1:]] == ["fresh", "2:fresh"]


def test_chat_with_messages_prints_plain_reply(echo_registry):
    out = io.StringIO()
    chat("m.echo", ["one"], stdout=out, registry=echo_registry)
    assert out.getvalue() == "1:one\n"


@pytest.mark.parametrize("messages, fragment", [
    ([], "no messages"),
    ([{"role": "robot", "content": "x"}], "unknown role 'robot'"),
    ([{"role": "user"}], "message 0 must be"),
    ([{"role": "user", "content": 3}], "content is int"),
])
def test_bad_messages_are_clear_errors(messages, fragment):
    with pytest.raises(MoxinError, match=fragment):
        check_messages(messages)


def test_generation_settings_are_checked(echo_registry):
    with pytest.raises(MoxinError, match="--temperature must be >= 0"):
        chat("m.echo", ["x"], temperature=-1, registry=echo_registry)
    with pytest.raises(MoxinError, match="--max-new-tokens must be positive"):
        chat("m.echo", ["x"], max_new_tokens=0, registry=echo_registry)


class PictureRuntime(EchoRuntime):
    """Takes images: says which picture it was given."""

    name = "picture"
    takes_images = True

    @classmethod
    def accepts(cls, model: str) -> bool:
        return model.endswith(".picture")

    def complete(self, prompt, max_new_tokens=64, temperature=0.0, image=None):
        return f"{prompt} about {image}"

    def chat(self, messages, max_new_tokens=256, temperature=0.0, image=None):
        return f"{len(messages)} turns about {image}"


def test_images_reach_runtimes_that_take_them_and_text_runtimes_refuse_them(tmp_path):
    from moxin_core.runtime import generate

    class Plugin:
        @hookimpl
        def moxin_runtimes(self):
            return {"echo": EchoRuntime, "picture": PictureRuntime}

    pm = get_plugin_manager()
    pm.register_plugin(Plugin(), name="pictures", distribution="moxin-plugin-pictures",
                       version="0")
    registry = Registry(pm)
    image = tmp_path / "cat.png"
    image.write_bytes(b"png")
    assert generate("m.picture", "tell", image=str(image), registry=registry) == \
        f"tell about {image}"
    out = io.StringIO()
    chat("m.picture", ["one", "two"], image=str(image), stdout=out, registry=registry)
    assert out.getvalue().splitlines() == [f"assistant> 1 turns about {image}",
                                           f"assistant> 3 turns about {image}"]
    # no image: runtimes are called as before
    assert generate("m.echo", "abc", registry=registry) == "cba"
    with pytest.raises(MoxinError, match=r"m.echo is a text model \(runtime echo\); --image"):
        generate("m.echo", "abc", image=str(image), registry=registry)
    with pytest.raises(MoxinError, match="--image .*nope.png: no such file"):
        generate("m.picture", "abc", image=str(tmp_path / "nope.png"), registry=registry)


def test_generation_options_greedy_or_sampled_and_every_stop_id_once():
    from types import SimpleNamespace

    from moxin_core.api import generation_options

    tok = SimpleNamespace(eos_token_id=2)
    greedy = generation_options(tok, 8, 0.0, [7, 2, 7])
    assert greedy["do_sample"] is False and greedy["temperature"] is None
    assert greedy["eos_token_id"] == [2, 7] and greedy["pad_token_id"] == 2
    assert greedy["max_new_tokens"] == 8
    sampled = generation_options(SimpleNamespace(eos_token_id=None), 4, 0.7, [9])
    assert sampled["do_sample"] is True and sampled["temperature"] == 0.7
    assert sampled["top_p"] == 0.95 and sampled["eos_token_id"] == [9]
