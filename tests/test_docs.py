"""Every shell command and Python snippet in README.md and docs/ runs, so the docs cannot rot.

How the documents are read:

* Every fenced block names its language. ``bash`` and ``python`` blocks are executed; ``text``
  (diagrams, output), ``toml`` and ``yaml`` are not commands (``toml``/``yaml`` must parse). A
  block with no language fails the test: say which it is.
* A file's ``bash`` blocks run in order, one command per line (a trailing backslash continues a
  line), in a fresh workspace of their own, as a user following that page would run them:
  ``moxin``, ``pip``, ``pytest``, ``torchrun`` and ``.venv/bin/python`` are this checkout's
  (``pip install`` goes into a throwaway venv layered over ``.venv``), ``benchmarks/`` and
  ``examples/`` are the repository's, nothing can reach a hub.
* A ``python`` block runs with that Python; one that defines ``test_*`` functions runs under
  pytest (with moxin's pytest plugin) and its tests must pass.

Where a command cannot run here exactly as written, the tables below say how it runs instead;
an entry that no longer matches a documented command fails the test, so they cannot go stale:

* ``SCALE``: ``moxin train`` of a tiny variant gains settings that shrink it to seconds (nano
  model, 64-token sequences, at most ``MAX_STEPS`` steps, fewer evaluator questions);
* ``EXPECT``: commands that must fail here, with the exit status and what their message says
  (those that need the Hugging Face hub, and the fault-injection examples, which kill the run);
* ``USER_FILES``: files a command names as the user's own (their JSONL data, their picture) are
  written first;
* ``STDIN``: what an interactive command reads;
* ``ELSEWHERE``: commands that take many minutes (``make demo``, the benchmarks' full runs, the
  test suite itself) are run by the named tests instead; their flags are checked against the
  script's ``--help`` here.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, subprocess_env

DOCUMENTS = ["README.md", *sorted(p.relative_to(REPO).as_posix()
                                  for p in (REPO / "docs").rglob("*.md"))]
LANGUAGES = {"bash", "python", "text", "toml", "yaml"}

MAX_STEPS = 4  # a documented run longer than MAX_KEPT_STEPS runs this many steps here
MAX_KEPT_STEPS = 50
_NANO = ["seq_len=64", "micro_batch_size=4", "warmup_steps=2", "checkpoint_every=2",
         "log_every=1"]
_FEW_MATH = "[{name: heldout-math, levels: [3], num: 8}]"
SCALE: dict[str, list[str]] = {
    "moxin-tiny-base": ["pretrain-128.model=moxin-nano", *_NANO],
    "moxin-tiny-instruct": _NANO,
    # GRPO prompts need their own length; held-out maths generates, so 8 problems
    "moxin-tiny-reasoning": ["micro_batch_size=2", f"reasoning-sft.evaluators={_FEW_MATH}",
                             f"grpo.evaluators={_FEW_MATH}"],
    "moxin-tiny-vlm": ["micro_batch_size=2"],
}

_OFFLINE = "could not be loaded"
#: command -> (exit status, fragments of its output)
EXPECT: dict[str, tuple[int, list[str]]] = {
    "moxin eval runs/tiny/dpo --suite open-llm": (2, ["moxin: error:", _OFFLINE, "--include-path"]),
    "MOXIN_FAULTS=checkpoint-write@2 moxin train moxin-tiny-base --out runs/faults --stage "
    "pretrain-128 --max-steps 8": (137, []),
    "MOXIN_FAULTS=micro-batch@7 moxin train moxin-tiny-base --out runs/killed --stage "
    "pretrain-128 --max-steps 8": (137, []),
    "MOXIN_FAULTS=checkpoint-write@2:enospc moxin train moxin-tiny-base --out runs/full-disk "
    "--stage pretrain-128 --max-steps 8": (2, ["No space left on device", "--resume"]),
    "MOXIN_FAULTS=loss@5:nan moxin train moxin-tiny-base --out runs/nan --stage pretrain-128 "
    "--max-steps 8": (2, ["Non-finite loss", "nonfinite=skip"]),
}


def _jsonl(workspace: Path) -> None:
    import json

    from moxin_core.corpus import iter_corpus

    folder = workspace / "data"
    folder.mkdir(exist_ok=True)
    records = list(iter_corpus(seed=5, num_documents=400))
    for part in range(2):
        with open(folder / f"part-{part}.jsonl", "w") as f:
            for record in records[part::2]:
                f.write(json.dumps({"text": record["text"]}) + "\n")


def _picture(workspace: Path) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 48), "white")  # a user's picture: any size
    ImageDraw.Draw(image).ellipse((16, 8, 48, 40), fill="red")
    image.save(workspace / "picture.png")


USER_FILES = {"--set 'data=[{source: files, paths: \"data/*.jsonl\", text_field: text}]'": _jsonl,
              "--image picture.png": _picture}
STDIN = {"moxin chat runs/tiny.q8_0.gguf": "What is 2 plus 3?\n"}
_BENCH = "tests/test_benchmarks.py"
ELSEWHERE = {
    "make demo": "tests/test_demo.py::test_demo_trains_exports_and_generates",
    "moxin demo --out runs/demo": "tests/test_demo.py::test_demo_trains_exports_and_generates",
    "make test": "tests/test_docs.py (the suite this test is part of)",
    "make bench": f"{_BENCH}::test_train_throughput_benchmark_smoke",
    "benchmarks/train_throughput.py": f"{_BENCH}::test_train_throughput_benchmark_smoke",
    "benchmarks/ddp_throughput.py": f"{_BENCH}::test_ddp_throughput_benchmark_smoke",
    "benchmarks/instruct_throughput.py":
        "plugins/moxin-plugin-instruct/tests/test_instruct_benchmark.py",
    "benchmarks/grpo_step.py": "plugins/moxin-plugin-reasoning/tests/test_reasoning_benchmark.py",
    "benchmarks/gguf_export.py": "plugins/moxin-plugin-gguf/tests/test_gguf_benchmark.py",
    "benchmarks/eval_throughput.py": "plugins/moxin-plugin-lmeval/tests/test_eval_benchmark.py",
    "benchmarks/vlm_throughput.py": "plugins/moxin-plugin-vlm/tests/test_vlm_benchmark.py",
    "benchmarks/gpu_throughput.py": f"{_BENCH}::test_gpu_throughput_benchmark_runs_on_the_cpu",
    "benchmarks/memory_plan.py":
        "tests/test_plan.py::test_memory_benchmark_script_prints_planned_against_measured",
}


@dataclass
class Block:
    document: str
    line: int  # of the opening fence
    language: str
    text: str


def blocks(document: str) -> list[Block]:
    """The fenced blocks of ``document`` (a path relative to the repository)."""
    found, current = [], None
    for number, line in enumerate((REPO / document).read_text().splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                current = Block(document, number, line[3:].strip(), "")
            else:
                found.append(current)
                current = None
        elif current is not None:
            current.text += line + "\n"
    assert current is None, f"{document}:{current.line}: the fence is never closed"
    return found


def commands(block: Block) -> list[tuple[int, str]]:
    """``(line, command)`` per command of a bash block, comments stripped (a comment ends its
    line: a backslash inside one continues nothing)."""
    out, pending, start = [], "", 0
    for offset, line in enumerate(block.text.splitlines(), 1):
        if not pending:
            start = block.line + offset
        code = _strip_comment(line).rstrip()
        if code.endswith("\\"):
            pending += code[:-1] + " "
            continue
        command = (pending + code).strip()
        pending = ""
        if command:
            out.append((start, " ".join(command.split())))
    return out


def _strip_comment(line: str) -> str:
    """``line`` without a shell comment (a ``#`` after a blank, outside quotes)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


# -- the workspace -----------------------------------------------------------------------------

def _workspace(root: Path) -> dict[str, str]:
    """A folder for one page's commands, with a venv layered over this checkout's ``.venv``;
    returns the environment its commands run with."""
    venv = root / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = sysconfig.get_paths()["purelib"]
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "moxin_base_venv.pth").write_text(f"import site; site.addsitedir({purelib!r})\n")
    here = Path(sys.executable).parent
    for script in ("moxin", "pip", "pytest", "torchrun", "lm_eval"):
        source = here / script
        if source.exists():
            body = source.read_text().split("\n", 1)[1]
            (venv / "bin" / script).write_text(f"#!{venv / 'bin' / 'python'}\n{body}")
            (venv / "bin" / script).chmod(0o755)
    for folder in ("benchmarks", "examples"):
        (root / folder).symlink_to(REPO / folder)
    return subprocess_env({"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
                           "VIRTUAL_ENV": str(venv), "PIP_NO_INDEX": "1",
                           "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                           "MPLBACKEND": "Agg"})


def _scaled(command: str) -> str:
    """``command`` with the settings that shrink a documented training run to seconds."""
    words = shlex.split(command)
    if "train" in words and any(op in words for op in ("&&", "||", "|", ";")):
        raise AssertionError(f"`{command}`: give a training command a line of its own (the "
                             "docs test shrinks one command per line)")
    try:
        at = words.index("train")
    except ValueError:
        return command
    if at == 0 or not words[at - 1].endswith(("moxin", "moxin_core.cli")):
        return command  # not `moxin train` (`moxin tokenizer train`, say)
    variant = words[at + 1]
    extra = [f"--set {shlex.quote(s)}" for s in SCALE.get(variant, [])]
    steps = [int(words[i + 1]) for i, w in enumerate(words) if w == "--max-steps"]
    if not steps or steps[-1] > MAX_KEPT_STEPS:
        extra.append(f"--max-steps {MAX_STEPS}")
    return " ".join([command, *extra])


def _elsewhere(command: str) -> str | None:
    return next((test for key, test in ELSEWHERE.items() if key in command), None)


def _check_elsewhere(command: str, test: str, env: dict, cwd: Path) -> None:
    """The named test exists, and (for a script) every flag of the command is the script's."""
    path, _, name = test.split(" ")[0].partition("::")
    source = (REPO / path).read_text()
    assert not name or f"def {name}(" in source, f"{test} does not exist"
    script = next((w for w in shlex.split(command) if w.endswith(".py")), None)
    if script is None:
        return
    assert script in source, f"{test} does not run {script}"
    helped = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True,
                            text=True, env=env, cwd=cwd, timeout=300)
    assert helped.returncode == 0, helped.stderr[-2000:]
    for flag in re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", command):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helped.stdout), (
            f"{script} has no option {flag}")


def _run(command: str, where: str, env: dict, cwd: Path) -> None:
    for key, write in USER_FILES.items():
        if key in command:
            write(cwd)
    stdin = STDIN.get(command)
    status, fragments = EXPECT.get(command, (0, []))
    result = subprocess.run(["bash", "-c", _scaled(command)], capture_output=True, text=True,
                            env=env, cwd=cwd, timeout=900, input=stdin or "")
    output = result.stdout + result.stderr
    code = 128 - result.returncode if result.returncode < 0 else result.returncode  # as a shell
    assert code == status, (
        f"{where}: `{command}` exited {code}, expected {status}\n{output[-4000:]}")
    for fragment in fragments:
        assert fragment in output, (
            f"{where}: `{command}` did not say {fragment!r}\n{output[-3000:]}")
    if status == 0 or status == 2:
        assert "Traceback" not in result.stderr, f"{where}: `{command}`\n{result.stderr[-4000:]}"


def _python(block: Block, env: dict, cwd: Path) -> None:
    where = f"{block.document}:{block.line}"
    python = str(cwd / ".venv" / "bin" / "python")
    tree = ast.parse(block.text, where)
    tests = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)
             and n.name.startswith("test_")]
    if tests:
        file = cwd / f"test_snippet_{block.line}.py"
        file.write_text(block.text)
        result = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
                                 str(file)], capture_output=True, text=True, env=env, cwd=cwd,
                                timeout=900)
        assert result.returncode == 0, f"{where}\n{result.stdout[-4000:]}{result.stderr[-2000:]}"
        for name in tests:
            assert re.search(rf"^PASSED \S*::{name}\b", result.stdout, re.M), (where, name)
    else:
        result = subprocess.run([python, "-c", block.text], capture_output=True, text=True,
                                env=env, cwd=cwd, timeout=900)
        assert result.returncode == 0, f"{where}\n{result.stderr[-4000:]}"


# -- the tests ---------------------------------------------------------------------------------

def _all_commands() -> list[str]:
    return [c for d in DOCUMENTS for b in blocks(d) if b.language == "bash"
            for _, c in commands(b)]


def test_every_block_names_its_language_and_the_tables_match_the_docs():
    for document in DOCUMENTS:
        for block in blocks(document):
            assert block.language in LANGUAGES, (
                f"{document}:{block.line}: a fenced block must name its language, one of "
                f"{sorted(LANGUAGES)} (bash and python blocks are executed by tests/test_docs.py)")
            if block.language == "toml":
                tomllib.loads(block.text)
            elif block.language == "yaml":
                yaml.safe_load(block.text)
    documented = _all_commands()
    for key in [*EXPECT, *STDIN]:
        assert key in documented, f"tests/test_docs.py lists `{key}`, which no document has"
    for key in [*USER_FILES, *ELSEWHERE]:
        assert any(key in c for c in documented), f"no documented command has `{key}`"
    for variant in SCALE:
        assert any(f"train {variant}" in c for c in documented), variant


def test_commands_are_read_as_a_shell_reads_them():
    block = Block("x.md", 10, "bash", textwrap.dedent("""\
        moxin train a --out b   # trains a
        moxin train a --out c \\
          --set 'data=[{paths: "d/*.jsonl"}]'   # with # in a comment
        # only a comment

        echo '#not a comment'
        """))
    assert commands(block) == [
        (11, "moxin train a --out b"),
        (12, "moxin train a --out c --set 'data=[{paths: \"d/*.jsonl\"}]'"),
        (16, "echo '#not a comment'")]
    # a backslash in a comment continues nothing
    tricky = Block("y.md", 1, "bash", "# see also \\\nmoxin plugins\n"
                   "moxin train a --out b  # c \\\nmoxin models\n")
    assert commands(tricky) == [(3, "moxin plugins"), (4, "moxin train a --out b"),
                                (5, "moxin models")]
    with pytest.raises(AssertionError, match="a line of its own"):
        _scaled("moxin train a --out b && moxin models")
    assert _scaled("moxin train moxin-tiny-vlm --out r") == (
        "moxin train moxin-tiny-vlm --out r --set micro_batch_size=2 --max-steps 4")
    assert _scaled("moxin train x --out r --max-steps 20") == "moxin train x --out r --max-steps 20"
    assert _scaled("moxin chat runs/train") == "moxin chat runs/train"
    assert _scaled("moxin tokenizer train --out t") == "moxin tokenizer train --out t"


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("document", [d for d in DOCUMENTS
                                      if any(b.language in ("bash", "python") for b in blocks(d))])
def test_the_documented_commands_run(document, tmp_path):
    page = [b for b in blocks(document) if b.language in ("bash", "python")]
    env = _workspace(tmp_path)
    for block in page:
        if block.language == "python":
            _python(block, env, tmp_path)
            continue
        for line, command in commands(block):
            where = f"{document}:{line}"
            test = _elsewhere(command)
            if test:
                _check_elsewhere(command, test, env, tmp_path)
            else:
                _run(command, where, env, tmp_path)
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)


def test_every_variant_has_a_current_page_with_measured_results():
    from moxin_core import docs_gen

    pages = docs_gen.variant_pages()
    for path, text in pages.items():
        assert path.exists() and path.read_text() == text, (
            f"{path.relative_to(REPO)} is stale: run `make docs` (python -m moxin_core.docs_gen)")
    assert set(docs_gen.VARIANTS_DIR.glob("*.md")) == set(pages), "a page of no variant"
    for path, text in pages.items():
        if path.name == "README.md":
            continue
        results = text.split("## Measured results", 1)[1].strip()
        assert results and "Not measured yet" not in results, f"{path.name}: no results"
        assert "| max_steps |" in text and "## Stages" in text, path.name
