"""Image-text data sources: the embedded shapes, and LLaVA-style JSON/JSONL files.

Every record is ``{"image": PIL image | path | None, "conversations": [{"from": "human" |
"gpt", "value": ...}, ...]}`` (LLaVA's layout): the first human turn holds the ``<image>``
marker when the record has an image. The ``vlm`` objective turns records into examples.

* ``embedded_shapes``: generated pictures of coloured shapes with one question each
  (``shapes.py``); options ``split`` (``train``/``heldout``), ``seed``, ``num_examples``,
  ``size`` (px), ``kinds`` (question types).
* ``llava``: ``path`` (a ``.json`` list or ``.jsonl`` file) and ``image_root`` (folder the
  ``image`` paths are relative to; a path leaving it is an error naming the record). Records
  without ``image`` are text-only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from moxin_core.api import ORIGIN, DataSource, MoxinError

from moxin_plugin_vlm.shapes import QUESTIONS, SPLITS, iter_records

IMAGE_MARKER = "<image>"


class EmbeddedShapes(DataSource):
    """Generated shapes pictures, one question each."""

    name = "embedded_shapes"

    def __init__(self, split: str = "train", seed: int = 0, num_examples: int = 5000,
                 size: int = 32, kinds: list[str] | None = None) -> None:
        if split not in SPLITS:
            raise MoxinError(f"{self.name}: split must be one of {', '.join(SPLITS)}, "
                             f"got {split!r}.")
        unknown = [k for k in (kinds or []) if k not in QUESTIONS]
        if unknown:
            raise MoxinError(f"{self.name}: unknown question kinds {unknown}; known: "
                             f"{', '.join(QUESTIONS)}.")
        self.split, self.seed, self.num_examples, self.size = split, seed, num_examples, size
        self.kinds = tuple(kinds) if kinds else None

    def iter_from(self, position: list | None) -> Iterator[tuple[dict, list]]:
        count, index = position or (0, 0)
        for index, record in iter_records(self.seed, self.split, index, self.size, self.kinds):
            if count >= self.num_examples:
                return
            count += 1
            yield {"image": record["image"], "type": record["type"],
                   "conversations": [
                       {"from": "human", "value": f"{IMAGE_MARKER}\n{record['question']}"},
                       {"from": "gpt", "value": record["answer"]}],
                   ORIGIN: f"{self.name}[{self.split}, seed={self.seed}]:{index}"}, [count,
                                                                                        index + 1]

    def fingerprint(self) -> str:
        key = f"{self.name}:{self.split}:{self.seed}:{self.num_examples}:{self.size}:{self.kinds}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def describe(self) -> str:
        return (f"{self.name}(split={self.split}, seed={self.seed}, "
                f"num_examples={self.num_examples}, size={self.size})")


class LLaVAFile(DataSource):
    """LLaVA-style records from a JSON list or JSONL file, images under ``image_root``."""

    name = "llava"

    def __init__(self, path: str, image_root: str | None = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise MoxinError(f"{self.name}: {self.path} does not exist.")
        self.root = Path(image_root).expanduser().resolve() if image_root else \
            self.path.parent.resolve()

    def _rows(self) -> list[tuple[int, object]]:
        text = self.path.read_text()
        if self.path.suffix == ".jsonl":
            rows = []
            for line_no, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append((line_no, json.loads(line)))
                    except ValueError as error:
                        raise MoxinError(f"{self.path}:{line_no}: not valid JSON ({error}).") \
                            from None
            return rows
        try:
            data = json.loads(text)
        except ValueError as error:
            raise MoxinError(f"{self.path}: not valid JSON ({error}).") from None
        if not isinstance(data, list):
            raise MoxinError(f"{self.path}: expected a JSON list of records.")
        return list(enumerate(data, 1))

    def iter_from(self, position: int | None) -> Iterator[tuple[dict, int]]:
        rows = self._rows()
        for index in range(position or 0, len(rows)):
            line, row = rows[index]
            where = f"{self.path}:{line}" if self.path.suffix == ".jsonl" else \
                f"{self.path}[record {line}]"
            if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
                raise MoxinError(f"{where}: a record needs `conversations`, a list of "
                                 "{from, value} turns.")
            image = row.get("image")
            if image is not None:
                resolved = (self.root / image).resolve()
                if self.root not in resolved.parents:
                    raise MoxinError(f"{where}: image path {image!r} leaves the image root "
                                     f"{self.root}.")
                image = str(resolved)
            yield {"image": image, "conversations": row["conversations"], ORIGIN: where}, \
                index + 1

    def fingerprint(self) -> str:
        stat = self.path.stat()
        key = f"{self.name}:{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{self.root}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.name}({self.path}, image_root={self.root})"
