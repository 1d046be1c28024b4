"""Data sources: streams of record dicts that can say exactly where they are.

A source never loads a whole data set: ``iter_from(position)`` opens the stream at a position
(``None`` = the start) and yields ``(record, position_after_record)`` pairs, so a consumer can save
the position of the last record it used and reopen the stream right after it. Positions are small
JSON-able values (a record index, a file index and byte offset). Every record carries
``"__origin__"`` (``"file.jsonl:12"``), used by error messages downstream.

Sources are registered by name through the ``moxin_data_sources`` hook; built-ins: ``embedded``,
``files`` and ``hf_dataset``. ``Mixture`` interleaves weighted sources deterministically.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from moxin_core import corpus
from moxin_core.data.text_files import check_text_file, decode_line
from moxin_core.errors import MoxinError

ORIGIN = "__origin__"
Position = Any


class DataSource(ABC):
    """A deterministic, resumable stream of records (one epoch per ``iter_from(None)``)."""

    name: str = "source"

    @abstractmethod
    def iter_from(self, position: Position | None) -> Iterator[tuple[dict, Position]]:
        """Yield ``(record, position_after_record)`` starting at ``position`` (``None``: start)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A short hash identifying what this source reads (options and file sizes/mtimes)."""

    def describe(self) -> str:
        return self.name

    def shard(self, index: int, count: int) -> DataSource:
        """Part ``index`` of ``count`` disjoint parts of this source (``records`` sharding).

        The default keeps every ``count``-th record, starting at record ``index``; sources that
        can seek to their own part (the embedded corpus, ``hf_dataset``) override it.
        """
        return StridedSource(self, index, count)


class StridedSource(DataSource):
    """Records ``index``, ``index + count``, ... of another source (the default ``shard``).

    The position is ``[inner position, records read]``.
    """

    def __init__(self, source: DataSource, index: int, count: int) -> None:
        if not 0 <= index < count:
            raise ValueError(f"shard {index} of {count} does not exist")
        self.source, self.index, self.count = source, index, count
        self.name = source.name

    def iter_from(self, position: list | None) -> Iterator[tuple[dict, list]]:
        inner, seen = position if position is not None else (None, 0)
        for record, inner in self.source.iter_from(inner):
            seen += 1
            if (seen - 1) % self.count == self.index:
                yield record, [inner, seen]

    def fingerprint(self) -> str:
        return _hash("shard", self.source.fingerprint(), self.index, self.count)

    def describe(self) -> str:
        return f"{self.source.describe()}[part {self.index + 1}/{self.count}]"


def select_text(record: dict, text_field: str | None) -> dict:
    """Expose ``record[text_field]`` as ``record["text"]`` (sources name their text differently:
    the-stack uses ``content``); a missing field, or one that holds no string, is an error naming
    the record's origin and the field."""
    if text_field is None:
        return record
    if text_field not in record:
        fields = ", ".join(k for k in record if k != ORIGIN) or "(none)"
        raise MoxinError(f"{record.get(ORIGIN, 'a record')}: no field {text_field!r} (fields "
                         f"present: {fields}). Name the field that holds the text with the "
                         "source's `text_field` option (`moxin tokenizer train --text-field`).")
    text = record[text_field]
    if not isinstance(text, str):
        raise MoxinError(f"{record.get(ORIGIN, 'a record')}: field {text_field!r} is "
                         f"{_json_kind(text)}, expected a string of text. Fix or remove the "
                         "record, or name the field that holds the text with the source's "
                         "`text_field` option.")
    record["text"] = text  # a no-op for text_field="text"
    return record


def _json_kind(value: Any) -> str:
    """``value``'s type in JSON's words, with a short preview (for error messages)."""
    if value is None:
        return "null"
    kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list",
            dict: "an object"}.get(type(value), f"a {type(value).__name__}")
    preview = json.dumps(value, default=str)
    return f"{kind} ({preview[:40] + '...' if len(preview) > 40 else preview})"


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class EmbeddedCorpus(DataSource):
    """The project's generated corpus (prose, arithmetic word problems, code snippets).

    Byte-identical on every machine for a given ``seed`` and ``num_documents``; document ``i``
    depends only on ``(seed, i, mix)``, so reopening at a position costs nothing.
    """

    name = "embedded"

    def __init__(self, seed: int = 0, num_documents: int = 20000,
                 mix: dict[str, float] | None = None) -> None:
        if num_documents <= 0:
            raise MoxinError(f"embedded: num_documents must be positive, got {num_documents}.")
        try:
            corpus.iter_corpus(seed, 0, mix)  # validates the mix when called
        except ValueError as exc:
            raise MoxinError(f"embedded: {exc}") from None
        self.seed, self.num_documents, self.mix = seed, num_documents, mix
        self.part, self.parts = 0, 1

    def shard(self, index: int, count: int) -> EmbeddedCorpus:
        """Documents ``index``, ``index + count``, ... (generated directly, none skipped)."""
        part = copy.copy(self)
        part.part, part.parts = self.part + index * self.parts, self.parts * count
        return part

    def iter_from(self, position: int | None) -> Iterator[tuple[dict, int]]:
        start = self.part if position is None else position
        for record in corpus.iter_corpus(self.seed, self.num_documents, self.mix, start=start,
                                         step=self.parts):
            record[ORIGIN] = f"embedded[seed={self.seed}]:{record['id']}"
            yield record, record["id"] + self.parts

    def fingerprint(self) -> str:
        return _hash("embedded", self.seed, self.num_documents, self.mix)

    def describe(self) -> str:
        part = f", part {self.part + 1}/{self.parts}" if self.parts > 1 else ""
        return f"embedded(seed={self.seed}, num_documents={self.num_documents}{part})"


_TEXT_SUFFIXES = (".txt", ".md")
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_PARQUET_SUFFIXES = (".parquet",)


class Files(DataSource):
    """Local text, JSONL or Parquet files given as paths or glob patterns.

    ``.txt``/``.md`` files are split into documents at blank lines and yield ``{"text": ...}``;
    ``.jsonl`` yields one record per line; ``.parquet`` one record per row. Files are read in sorted
    path order, a stream at a time. Text and JSONL files must be UTF-8.

    ``max_record_mb``: the longest JSONL line or text document read, in MiB. A longer one is an
    error rather than one enormous document to tokenise: usually a file whose newlines were lost
    or a data set dumped as one JSON array.
    """

    name = "files"

    def __init__(self, paths: str | Sequence[str], text_field: str | None = None,
                 max_record_mb: float = 16) -> None:
        self.text_field = text_field
        if isinstance(max_record_mb, bool) or not isinstance(max_record_mb, (int, float)) \
                or max_record_mb <= 0:
            raise MoxinError(f"files: max_record_mb must be a positive number (MiB), got "
                             f"{max_record_mb!r}.")
        self.max_record_mb = max_record_mb
        patterns = [paths] if isinstance(paths, str) else list(paths)
        if not patterns:
            raise MoxinError("files: give at least one path or glob pattern in `paths`.")
        files: list[Path] = []
        for pattern in patterns:
            expanded = os.path.expanduser(str(pattern))
            matches = sorted(glob.glob(expanded, recursive=True))
            if not matches:
                raise MoxinError(f"files: {pattern!r} matches no file (looked for {expanded!r} "
                                 f"from {os.getcwd()}). Check the path or the glob pattern.")
            for match in matches:
                path = Path(match)
                if path.is_dir():
                    raise MoxinError(f"files: {match!r} is a folder; give files or a glob such as "
                                     f"'{match}/*.jsonl', or use the hf_dataset source.")
                if not path.name.endswith(_TEXT_SUFFIXES + _JSONL_SUFFIXES + _PARQUET_SUFFIXES):
                    raise MoxinError(f"files: {match!r} has an unsupported extension; moxin reads "
                                     ".txt, .md, .jsonl, .json (one object per line) and .parquet.")
                files.append(path)
        self.files = files

    def iter_from(self, position: list | None) -> Iterator[tuple[dict, list]]:
        file_index, offset, line_no = position or (0, 0, 0)
        for index in range(file_index, len(self.files)):
            path = self.files[index]
            start_offset, start_line = (offset, line_no) if index == file_index else (0, 0)
            if path.name.endswith(_PARQUET_SUFFIXES):
                reader = self._parquet(path, start_line)
            elif path.name.endswith(_JSONL_SUFFIXES):
                reader = self._jsonl(path, start_offset, start_line)
            else:
                reader = self._text(path, start_offset, start_line)
            for record, next_offset, next_line in reader:
                yield select_text(record, self.text_field), [index, next_offset, next_line]

    def _lines(self, path: Path, offset: int, line_no: int) -> Iterator[tuple[bytes, int, int]]:
        """``(raw line, offset after it, its line number)`` from ``offset``; a line longer than
        ``max_record_mb`` is an error (read no further than the limit)."""
        limit = int(self.max_record_mb * 1024 * 1024)
        if offset == 0:
            check_text_file(path)
        with open(path, "rb") as handle:
            handle.seek(offset)
            while raw := handle.readline(limit + 1):
                line_no += 1
                if len(raw) > limit:
                    self._too_long(path, line_no, "a line")
                offset += len(raw)
                yield raw, offset, line_no

    def _too_long(self, path: Path, line_no: int, what: str) -> NoReturn:
        raise MoxinError(
            f"{path}:{line_no}: {what} longer than {self.max_record_mb:g} MB (the files source's "
            "max_record_mb), too big to be one document: were the file's newlines lost, or is it "
            "one big JSON array instead of one JSON object per line? Split it into records of "
            "reasonable size, or raise the limit with the source option, e.g. "
            "data=[{source: files, paths: ..., max_record_mb: 64}].")

    def _jsonl(self, path: Path, offset: int, line_no: int) -> Iterator[tuple[dict, int, int]]:
        for raw, offset, line_no in self._lines(path, offset, line_no):
            line = decode_line(path, line_no, raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MoxinError(f"{path}:{line_no}: malformed JSON line ({exc}). Fix or remove "
                                 "the line; every line of a .jsonl file must be one JSON "
                                 "object.") from None
            if not isinstance(record, dict):
                raise MoxinError(f"{path}:{line_no}: expected a JSON object, got "
                                 f"{_json_kind(record)}. Every line of a .jsonl file must be one "
                                 'JSON object such as {"text": "..."}.')
            record[ORIGIN] = f"{path}:{line_no}"
            yield record, offset, line_no

    def _text(self, path: Path, offset: int, line_no: int) -> Iterator[tuple[dict, int, int]]:
        lines: list[str] = []
        size = 0
        first = line_no + 1
        for raw, offset, line_no in self._lines(path, offset, line_no):
            line = decode_line(path, line_no, raw)
            if line.strip():
                if not lines:
                    first, size = line_no, 0
                lines.append(line)
                size += len(raw)
                if size > self.max_record_mb * 1024 * 1024:
                    self._too_long(path, first, "a document (lines up to a blank line)")
            elif lines:
                yield {"text": "".join(lines).rstrip("\n"), ORIGIN: f"{path}:{first}"}, \
                    offset, line_no
                lines = []
        if lines:
            yield {"text": "".join(lines).rstrip("\n"), ORIGIN: f"{path}:{first}"}, offset, line_no

    @staticmethod
    def _parquet(path: Path, row: int) -> Iterator[tuple[dict, int, int]]:
        import pyarrow.parquet as pq

        def unreadable(exc: Exception) -> MoxinError:
            return MoxinError(f"{path}: cannot read as Parquet ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}). The file may be "
                              "truncated (a copy or download cut short) or no Parquet file; "
                              "write or download it again.")

        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:
            raise unreadable(exc) from None
        seen = 0  # rows before the current batch
        batches = parquet.iter_batches(batch_size=1024)
        while True:
            try:
                batch = next(batches, None)
            except Exception as exc:  # a damaged row group past a readable footer
                raise unreadable(exc) from None
            if batch is None:
                return
            if seen + batch.num_rows > row:
                for index, record in enumerate(batch.to_pylist(), start=seen):
                    if index >= row:
                        record[ORIGIN] = f"{path}:row {index + 1}"
                        yield record, 0, index + 1
            seen += batch.num_rows

    def fingerprint(self) -> str:
        stats = [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in self.files]
        return _hash("files", stats)

    def describe(self) -> str:
        return f"files({len(self.files)} files: {', '.join(str(p) for p in self.files[:3])}" + (
            ", ...)" if len(self.files) > 3 else ")")


class HFDataset(DataSource):
    """Any ``datasets.load_dataset`` path (local folder, builder name or hub id), streamed.

    The position is the stream's own ``IterableDataset.state_dict()`` after each record: a
    resumed stream continues in the shard (file) it stopped in, without reading the shards
    before it again. ``records`` sharding uses ``datasets.distributed.split_dataset_by_node``
    (whole shards per part when the shard count divides evenly, else every part reads all and
    keeps its own records).
    """

    name = "hf_dataset"

    def __init__(self, path: str, name: str | None = None, split: str = "train",
                 data_files: Any = None, revision: str | None = None,
                 text_field: str | None = None) -> None:
        self.text_field = text_field
        self.path, self.config_name, self.split = path, name, split
        self.data_files, self.revision = data_files, revision
        self.part, self.parts = 0, 1
        self._dataset = None

    def shard(self, index: int, count: int) -> HFDataset:
        if self.parts != 1:
            return StridedSource(self, index, count)  # type: ignore[return-value]
        part = copy.copy(self)
        part.part, part.parts, part._dataset = index, count, None
        return part

    def _load(self):
        if self._dataset is None:
            import datasets
            from datasets.distributed import split_dataset_by_node

            try:
                dataset = datasets.load_dataset(
                    self.path, self.config_name, split=self.split, data_files=self.data_files,
                    revision=self.revision, streaming=True)
            except Exception as exc:
                raise MoxinError(
                    f"hf_dataset: could not load {self.path!r} (split {self.split!r}): "
                    f"{type(exc).__name__}: {exc}. Give a local folder, a builder name with "
                    "data_files, or a hub id reachable from this machine.") from None
            if self.parts > 1:
                dataset = split_dataset_by_node(dataset, rank=self.part, world_size=self.parts)
            self._dataset = dataset
        return self._dataset

    def iter_from(self, position: dict | None) -> Iterator[tuple[dict, dict]]:
        if position is None:
            self._dataset = None  # a fresh object: one that was resumed would resume again
        dataset = self._load()
        index = 0
        if position is not None:
            dataset.load_state_dict(position["dataset"])
            index = position["records"]
        for record in dataset:
            record = dict(record)
            record[ORIGIN] = f"{self.path}[{self.split}]:{index}"
            index += 1
            yield (select_text(record, self.text_field),
                   {"dataset": dataset.state_dict(), "records": index})

    def fingerprint(self) -> str:
        local = Path(self.path)
        stats = ([(str(p), p.stat().st_size) for p in sorted(local.rglob("*")) if p.is_file()]
                 if local.is_dir() else [])
        return _hash("hf_dataset", self.path, self.config_name, self.split, self.data_files,
                     self.revision, stats)

    def describe(self) -> str:
        part = f", part {self.part + 1}/{self.parts}" if self.parts > 1 else ""
        return f"hf_dataset({self.path}, split={self.split}{part})"


BUILTIN_SOURCES = {"embedded": EmbeddedCorpus, "files": Files, "hf_dataset": HFDataset}


@dataclass
class WeightedSource:
    source: DataSource
    weight: float


class Mixture:
    """Deterministic weighted interleaving of sources, restarting each source when it runs out.

    At every draw a source is chosen with probability proportional to its weight (the recipe mixes
    SlimPajama, DCLM-baseline and the-stack-dedup this way). ``state_dict()`` after a record is
    enough to reopen the stream right after it.
    """

    def __init__(self, sources: Sequence[WeightedSource], seed: int = 0) -> None:
        if not sources:
            raise MoxinError("A stage needs at least one data source.")
        for item in sources:
            if not item.weight > 0:
                raise MoxinError(f"Data source {item.source.describe()} has weight {item.weight}; "
                                 "weights must be positive numbers.")
        self.sources = list(sources)
        self.seed = seed
        self._rng = random.Random(seed)
        self._positions: list[Position | None] = [None] * len(self.sources)
        self._epochs = [0] * len(self.sources)
        self._iters: list[Iterator | None] = [None] * len(self.sources)

    def state_dict(self) -> dict:
        return {"rng": self._rng.getstate(), "positions": list(self._positions),
                "epochs": list(self._epochs)}

    def load_state_dict(self, state: dict) -> None:
        self._rng.setstate(state["rng"])
        self._positions = list(state["positions"])
        self._epochs = list(state["epochs"])
        self._iters = [None] * len(self.sources)

    def fingerprint(self) -> str:
        return _hash("mixture", self.seed,
                     [(s.source.fingerprint(), s.weight) for s in self.sources])

    def sharded(self, index: int, count: int) -> Mixture:
        """The same weights and seed over part ``index`` of ``count`` of every source."""
        return Mixture([WeightedSource(s.source.shard(index, count), s.weight)
                        for s in self.sources], seed=self.seed)

    def _next_from(self, index: int) -> dict:
        for attempt in range(2):
            if self._iters[index] is None:
                self._iters[index] = self.sources[index].source.iter_from(self._positions[index])
            try:
                record, self._positions[index] = next(self._iters[index])
                return record
            except StopIteration:
                if attempt == 1 or self._positions[index] is None:
                    raise MoxinError(f"Data source {self.sources[index].source.describe()} is "
                                     "empty: it yielded no record. Check its files or "
                                     "options.") from None
                self._epochs[index] += 1
                self._positions[index] = None
                self._iters[index] = None
        raise AssertionError("unreachable")

    def __iter__(self) -> Iterator[dict]:
        weights = [s.weight for s in self.sources]
        indices = range(len(self.sources))
        while True:
            index = self._rng.choices(indices, weights)[0] if len(weights) > 1 else 0
            yield self._next_from(index)
