"""``moxin new-plugin NAME --kind KIND``: scaffold a plugin package that installs and passes its
own tests at once.

The package has a ``pyproject.toml`` registering the plugin in the ``moxin`` entry-point group,
the plugin module (the hook that registers the component), the component itself (a small working
example of its kind, to be replaced by the real thing), a README and tests that use
:mod:`moxin_core.testing`'s fixtures and contract checks.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from pathlib import Path
from typing import Any

from moxin_core.commands.base import Command
from moxin_core.errors import MoxinError

KINDS = ("objective", "data", "encoder", "exporter", "evaluator", "reward", "model")

#: kind -> (hook, component module's code, test module's code); {name} {cls} {package} filled in
_HOOKS = {"objective": "moxin_objectives", "data": "moxin_data_sources",
          "encoder": "moxin_vision_encoders", "exporter": "moxin_exporters",
          "evaluator": "moxin_evaluators", "reward": "moxin_reward_functions",
          "model": "moxin_models"}

_COMPONENTS = {
    "objective": '''
        """The {name} objective: next-token cross-entropy with an optional z-loss on the logits
        (a starting point: replace the loss with yours)."""

        from __future__ import annotations

        from typing import Any

        import torch

        from moxin_core.api import CausalLM


        class {cls}(CausalLM):
            """Causal LM loss plus ``z_loss`` x mean(logsumexp(logits)^2) (PaLM's z-loss)."""

            name = "{name}"

            def __init__(self, z_loss: float = 1e-4, text_field: str = "text") -> None:
                super().__init__(text_field=text_field)
                self.z_loss = float(z_loss)

            def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
                out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                            labels=batch["labels"], use_cache=False)
                scored = batch["labels"][:, 1:] != -100
                z = torch.logsumexp(out.logits[:, :-1].float(), dim=-1)[scored].pow(2).mean()
                return out.loss + self.z_loss * z, {{"z": z.detach()}}
        ''',
    "data": '''
        """The {name} data source: one record per non-empty line of a UTF-8 text file
        (a starting point: replace the reading with yours)."""

        from __future__ import annotations

        import hashlib
        from collections.abc import Iterator
        from pathlib import Path

        from moxin_core.api import ORIGIN, DataSource, MoxinError


        class {cls}(DataSource):
            """``path``: a text file; every non-empty line is ``{{"text": line}}``. The position
            is the byte offset after the record, so a resumed run continues exactly."""

            name = "{name}"

            def __init__(self, path: str) -> None:
                self.path = Path(path).expanduser()
                if not self.path.is_file():
                    raise MoxinError(f"{name}: {{self.path}} does not exist; give `path` a text "
                                     "file.")

            def iter_from(self, position: int | None) -> Iterator[tuple[dict, int]]:
                offset = position or 0
                with open(self.path, "rb") as handle:
                    handle.seek(offset)
                    for raw in handle:
                        offset += len(raw)
                        text = raw.decode("utf-8").strip()
                        if text:
                            yield {{"text": text, ORIGIN: f"{{self.path}}"}}, offset

            def fingerprint(self) -> str:
                stat = self.path.stat()
                key = f"{{self.path.resolve()}}:{{stat.st_size}}:{{stat.st_mtime_ns}}"
                return hashlib.sha256(key.encode()).hexdigest()[:16]

            def describe(self) -> str:
                return f"{name}({{self.path}})"
        ''',
    "encoder": '''
        """The {name} vision encoder: patches of the image, linearly embedded (a starting point:
        replace it with a real backbone)."""

        from __future__ import annotations

        import torch
        from torchvision import transforms


        def _rgb(picture):
            return picture.convert("RGB")


        class {cls}(torch.nn.Module):
            """``(batch, 3, size, size)`` images to ``(batch, (size/patch)^2, width)`` features."""

            def __init__(self, size: int = 32, patch: int = 8, width: int = 64) -> None:
                super().__init__()
                self.feature_width, self.num_patches = width, (size // patch) ** 2
                self.embed = torch.nn.Conv2d(3, width, kernel_size=patch, stride=patch)
                self.transform = transforms.Compose([
                    transforms.Lambda(_rgb),  # grayscale and RGBA pictures as well
                    transforms.Resize((size, size)), transforms.ToTensor(),
                    transforms.Normalize([0.5] * 3, [0.5] * 3)])

            def forward(self, images: torch.Tensor) -> torch.Tensor:
                return self.embed(images).flatten(2).transpose(1, 2)
        ''',
    "exporter": '''
        """The {name} exporter: the model's weights in half precision as one safetensors file
        (a starting point: write your format instead)."""

        from __future__ import annotations

        from pathlib import Path
        from typing import Any

        from safetensors.torch import save_file

        from moxin_core.api import MoxinError, load_model


        def export(model_path: str, out: str, force: bool = False, registry: Any = None,
                   **options: Any) -> Path:
            """Write ``model_path``'s weights (fp16) to the file ``out``."""
            if options:
                raise MoxinError(f"{name} export: unknown option(s) {{sorted(options)}}.")
            out_path = Path(out)
            if out_path.exists() and not force:
                raise MoxinError(f"{{out_path}} exists; pass --force to replace it.")
            model, _processor, _family = load_model(model_path, registry=registry)
            state = {{k: v.detach().half().contiguous() for k, v in model.state_dict().items()}}
            out_path.parent.mkdir(parents=True, exist_ok=True)
            save_file(state, str(out_path))
            return out_path
        ''',
    "evaluator": '''
        """The {name} evaluator: perplexity of the model on a few sentences (a starting point:
        score what your users care about)."""

        from __future__ import annotations

        import math
        from typing import Any

        import torch

        from moxin_core.api import MoxinError, load_model

        TEXTS = ("Mia has 12 apples. She buys 7 more.", "The train leaves at nine.")


        def {name_ident}(texts: Any = None) -> Any:
            texts = list(texts or TEXTS)
            if not texts or not all(isinstance(t, str) and t for t in texts):
                raise MoxinError("{name}: `texts` must be a list of non-empty strings.")

            def evaluate(model_path: str) -> dict[str, float]:
                model, tokenizer, _family = load_model(model_path)
                model.eval()
                total, count = 0.0, 0
                with torch.no_grad():
                    for text in texts:
                        ids = torch.tensor([tokenizer(text).input_ids])
                        loss = model(input_ids=ids, labels=ids).loss
                        total += float(loss) * (ids.shape[1] - 1)
                        count += ids.shape[1] - 1
                return {{"perplexity": math.exp(total / count), "n": float(len(texts))}}

            return evaluate
        ''',
    "reward": '''
        """The {name} reward: 1 for a completion within ``max_words`` words, less beyond (a
        starting point: reward what your task needs)."""

        from __future__ import annotations

        from typing import Any


        def {name_ident}(max_words: int = 50) -> Any:
            def reward(prompts: list[str], completions: list[str], **fields: Any) -> list[float]:
                out = []
                for completion in completions:
                    words = len(completion.split())
                    out.append(1.0 if words <= max_words else max_words / words)
                return out

            return reward
        ''',
    "model": '''
        """The {name} model preset: a small Mistral-architecture causal LM (a starting point:
        set your sizes)."""

        from __future__ import annotations

        from transformers import MistralConfig

        from moxin_core.api import DEFAULT_FAMILY, ModelPreset


        def {name_ident}() -> ModelPreset:
            config = MistralConfig(vocab_size=512, hidden_size=64, intermediate_size=176,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=512,
                                   tie_word_embeddings=False)
            return ModelPreset(DEFAULT_FAMILY, config, "{name}: a 2-layer Mistral-shaped model")
        ''',
}

_REGISTERS = {  # what the hook returns
    "objective": "{{\"{name}\": {cls}}}", "data": "{{\"{name}\": {cls}}}",
    "encoder": "{{\"{name}\": {cls}}}",
    "exporter": "{{\"{name}\": lambda: export}}",
    "evaluator": "{{\"{name}\": {name_ident}}}", "reward": "{{\"{name}\": {name_ident}}}",
    "model": "{{\"{name}\": {name_ident}}}",
}

#: what a kind's component imports besides moxin-core (the encoder's transform is torchvision's)
_DEPENDENCIES = {"encoder": ["moxin-core", "torchvision"]}

_IMPORTS = {
    "objective": "from {package}.component import {cls}",
    "data": "from {package}.component import {cls}",
    "encoder": "from {package}.component import {cls}",
    "exporter": "from {package}.component import export",
    "evaluator": "from {package}.component import {name_ident}",
    "reward": "from {package}.component import {name_ident}",
    "model": "from {package}.component import {name_ident}",
}

_TESTS = {
    "objective": '''
        from moxin_core.testing import check_objective

        from {package}.component import {cls}


        def test_the_objective_is_registered(moxin_registry):
            assert moxin_registry.get("objectives", "{name}") is {cls}


        def test_the_objective_keeps_the_contracts(moxin_tokenizer, moxin_tiny_model,
                                                   moxin_records):
            check_objective({cls}, moxin_tiny_model, moxin_tokenizer, moxin_records(64))
        ''',
    "data": '''
        from moxin_core.testing import check_data_source

        from {package}.component import {cls}


        def test_the_source_keeps_the_contracts(moxin_registry, tmp_path):
            path = tmp_path / "sample.txt"
            path.write_text("".join(f"line {{i}}\\n" for i in range(60)))
            factory = moxin_registry.get("data_sources", "{name}")
            assert factory is {cls}
            check_data_source(lambda: factory(path=str(path)))
        ''',
    "encoder": '''
        from moxin_core.testing import check_vision_encoder

        from {package}.component import {cls}


        def test_the_encoder_is_registered(moxin_registry):
            assert moxin_registry.get("vision_encoders", "{name}") is {cls}


        def test_the_encoder_keeps_the_contracts():
            encoder = check_vision_encoder({cls}, size=32, patch=8, width=64)
            assert encoder.num_patches == 16
        ''',
    "exporter": '''
        from safetensors.torch import load_file

        from moxin_core.testing import check_exporter


        def test_the_exporter_keeps_the_contracts(moxin_registry, moxin_model_folder,
                                                  moxin_tiny_model, tmp_path):
            out = check_exporter(moxin_registry.get("exporters", "{name}"), moxin_model_folder,
                                 tmp_path / "model.safetensors", registry=moxin_registry)
            weights = load_file(out)
            assert set(weights) == set(moxin_tiny_model().state_dict())
            assert all(w.dtype.itemsize == 2 for w in weights.values())
        ''',
    "evaluator": '''
        from moxin_core.testing import check_evaluator


        def test_the_evaluator_keeps_the_contracts(moxin_registry, moxin_model_folder):
            scores = check_evaluator(moxin_registry.get("evaluators", "{name}"),
                                     moxin_model_folder, {{"texts": ["One two three."]}})
            assert scores["n"] == 1 and scores["perplexity"] > 1
        ''',
    "reward": '''
        from moxin_core.testing import check_reward


        def test_the_reward_keeps_the_contracts(moxin_registry):
            factory = moxin_registry.get("reward_functions", "{name}")
            completions = ["one two", "one two three four five six", ""]
            rewards = check_reward(lambda: factory(max_words=3), ["q"] * 3, completions,
                                   completion_ids=[[1, 2], [1] * 6, []])
            assert rewards == [1.0, 0.5, 1.0]
        ''',
    "model": '''
        from moxin_core.api import resolve_model
        from moxin_core.testing import check_model_family


        def test_the_preset_keeps_the_family_contracts(moxin_registry, moxin_tokenizer,
                                                       moxin_tokenizer_dir, tmp_path):
            ref = resolve_model(moxin_registry, "{name}")
            out = check_model_family(ref.family, ref.config(), moxin_tokenizer, tmp_path,
                                     processor_source=moxin_tokenizer_dir)
            assert (out / "moxin.json").is_file()
        ''',
}


def _render(template: str, **names: str) -> str:
    return textwrap.dedent(template).lstrip("\n").format(**names)


def scaffold(name: str, kind: str, out: str | Path = ".") -> Path:
    """Write the package ``moxin-plugin-NAME`` of a ``kind`` component into ``out``."""
    if kind not in KINDS:
        raise MoxinError(f"Unknown plugin kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name):
        raise MoxinError(f"Plugin name {name!r}: use lower-case letters, digits and single "
                         "hyphens, starting with a letter (e.g. orpo, my-data).")
    ident = name.replace("-", "_")
    names = {"name": name, "name_ident": ident, "package": f"moxin_plugin_{ident}",
             "cls": "".join(part.capitalize() for part in name.split("-")),
             "dist": f"moxin-plugin-{name}"}
    root = Path(out).expanduser() / names["dist"]
    if root.exists():
        raise MoxinError(f"{root} exists already; choose another --out or remove it.")
    package = root / names["package"]
    (package).mkdir(parents=True)
    (root / "tests").mkdir()
    (package / "__init__.py").write_text(f'"""{names["dist"]}: moxin plugin ({kind})."""\n')
    (package / "component.py").write_text(_render(_COMPONENTS[kind], **names))
    registers = _REGISTERS[kind].format(**names).replace("{{", "{").replace("}}", "}")
    (package / "plugin.py").write_text(_render('''
        """The moxin plugin: registers {name} through the ``{hook}`` hook."""

        from moxin_core.api import hookimpl

        {imports}


        @hookimpl
        def {hook}():
            return {registers}
        ''', **names, hook=_HOOKS[kind], imports=_IMPORTS[kind].format(**names),
        registers=registers))
    (root / "tests" / f"test_{ident}.py").write_text(
        f'"""{names["dist"]}\'s tests (fixtures from moxin_core.testing)."""\n\n'
        + _render(_TESTS[kind], **names))
    (root / "pyproject.toml").write_text(_render('''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.1.0"
        description = "moxin plugin ({kind})"
        requires-python = ">=3.10"
        dependencies = {dependencies}

        [project.optional-dependencies]
        test = ["pytest"]

        [project.entry-points.moxin]
        {name_ident} = "{package}.plugin"

        [tool.setuptools]
        packages = ["{package}"]
        ''', **names, kind=kind,
        dependencies=json.dumps(_DEPENDENCIES.get(kind, ["moxin-core"]))))
    (root / "README.md").write_text(_render('''
        # {dist}

        A moxin plugin ({kind}), registered as `{name}` through the
        `{hook}` hook (`{package}/plugin.py`); the component is in `{package}/component.py`.

        ```bash
        pip install -e ".[test]"
        moxin plugins            # lists {dist} and what it registers
        pytest                   # its tests, with moxin_core.testing's fixtures and contracts
        ```
        ''', **names, kind=kind, hook=_HOOKS[kind]))
    return root


class NewPluginCommand(Command):
    help = "scaffold a plugin package (installs and passes its own tests at once)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help="the component's name (lower case, e.g. orpo); the "
                            "package is moxin-plugin-NAME")
        parser.add_argument("--kind", required=True, choices=KINDS,
                            help="what the plugin adds")
        parser.add_argument("--out", default=".", help="folder to create the package in")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        root = scaffold(args.name, args.kind, args.out)
        article = "an" if args.kind[0] in "aeiou" else "a"
        print(f"Created {root} ({article} {args.kind} registered as {args.name!r}). Next:\n"
              f"  pip install -e '{root}[test]'\n  moxin plugins\n  pytest {root}")
        return 0
