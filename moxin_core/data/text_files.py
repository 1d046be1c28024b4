"""Reading text and JSONL files as UTF-8, with errors that say what a file holds instead.

A file given as text may be in another encoding (latin-1, UTF-16), compressed, or binary; the
first bytes of a file, or the bytes of the line that fails to decode, usually say which, and
the error names the file, the line and the command that converts it.
"""

from __future__ import annotations

from pathlib import Path

from moxin_core.errors import MoxinError

#: what the first bytes of a file say it is, when it is not UTF-8 text
_SIGNATURES = (
    (b"\xff\xfe\x00\x00", "UTF-32 text", "iconv -f UTF-32 -t UTF-8 FILE > NEW"),
    (b"\x00\x00\xfe\xff", "UTF-32 text", "iconv -f UTF-32 -t UTF-8 FILE > NEW"),
    (b"\xff\xfe", "UTF-16 text", "iconv -f UTF-16 -t UTF-8 FILE > NEW"),
    (b"\xfe\xff", "UTF-16 text", "iconv -f UTF-16 -t UTF-8 FILE > NEW"),
    (b"\x1f\x8b", "gzip-compressed", "gunzip it first (gunzip -k FILE)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (zstd -d FILE)"),
    (b"BZh", "bzip2-compressed", "decompress it first (bunzip2 -k FILE)"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (unxz -k FILE)"),
    (b"PK\x03\x04", "a zip archive", "unpack it first (unzip FILE)"),
    (b"PAR1", "a Parquet file", "give it the .parquet extension"),
)


def check_text_file(path: Path) -> None:
    """Refuse a file that starts like no UTF-8 text (another encoding, an archive)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    for signature, kind, fix in _SIGNATURES:
        if head.startswith(signature):
            raise MoxinError(f"{path}: the file is {kind}, not UTF-8 text; moxin reads UTF-8 "
                             f"{path.suffix} files: {fix.replace('FILE', str(path))}.")


def decode_line(path: Path, line_no: int, raw: bytes) -> str:
    """One line of a text or JSONL file as a string; a clear error for bytes that are no UTF-8
    text (NUL bytes: a binary file; invalid sequences: another encoding such as latin-1)."""
    if b"\x00" in raw:
        raise MoxinError(f"{path}:{line_no}: NUL bytes in a text line: this looks like a binary "
                         "file (or UTF-16 text without a byte-order mark), not UTF-8 text. Give "
                         "moxin .txt/.jsonl files in UTF-8, or .parquet files.")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MoxinError(f"{path}:{line_no}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                         f"column {exc.start + 1}); the file is probably in another encoding such "
                         f"as latin-1 or cp1252. Convert it to UTF-8 (e.g. `iconv -f latin1 -t "
                         f"utf-8 {path} > NEW`) or fix the line.") from None
    return line.removeprefix("\ufeff") if line_no == 1 else line  # a UTF-8 byte-order mark
