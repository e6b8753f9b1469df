"""Delimited text (CSV, TSV, ...) through ``pyarrow.csv``, one block at a time.

Every column is read as a string: ids keep their leading zeros and the canonical conversion
decides the types, so one odd value is reported with its line instead of changing a column's type.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.csv as pcsv

from shoprec.reading.errors import InputError
from shoprec.reading.files import FileKind, head_bytes, inner_suffix, open_stream, refuse_empty
from shoprec.reading.options import ReadOptions
from shoprec.reading.sniff import detect_delimiter, header_hint

NULL_VALUES = ("", "NA", "N/A", "NULL", "null", "NaN", "nan")
SUFFIX_DELIMITER = {".csv": ",", ".tsv": "\t", ".inter": "\t", ".item": "\t", ".user": "\t"}
AS_TEXT = {f"f{i}": pa.string() for i in range(1024)}  # pyarrow's generated names: a header row stays text


@dataclass(frozen=True)
class TextSpec:
    delimiter: str
    delimiter_source: str
    header: bool
    names: tuple[str, ...]  # as in the file (with RecBole types)
    encoding: str
    quoting: bool = True


def text_spec(path: Path, kind: FileKind, options: ReadOptions) -> TextSpec:
    """Delimiter (given or detected) and column names of a delimited text file."""
    refuse_empty(path, kind)
    data, _ = head_bytes(path, kind)
    sample = data.decode(options.encoding, errors="replace").lstrip("\ufeff")
    delimiter, source = _delimiter(path, sample, options)
    first = _first_row(path, kind, data.lstrip(b"\xef\xbb\xbf"), delimiter, options)
    if not first:
        raise InputError(f"{path.name} has no header and no rows")
    names = _column_names(path, first, sample, delimiter, options)
    return TextSpec(delimiter, source, options.header, names, options.encoding, options.quoting)


def _delimiter(path: Path, sample: str, options: ReadOptions) -> tuple[str, str]:
    """(delimiter, where it came from): given, else detected with the suffix's as the tie-break."""
    if options.delimiter:
        delimiter, source = options.delimiter, "given"
    else:
        detected = detect_delimiter(sample, SUFFIX_DELIMITER.get(inner_suffix(path)))
        delimiter, source = (detected, "detected") if detected else (",", "detected (one column)")
    if len(delimiter) != 1:
        raise InputError(f"{path.name}: the delimiter must be one character, got {delimiter!r}")
    return delimiter, source


def _column_names(path: Path, first: tuple[str, ...], sample: str, delimiter: str,
                  options: ReadOptions) -> tuple[str, ...]:
    """The given names (they must fit the first line; with a header they replace it), else the header's."""
    given = options.columns
    if not options.header and not given:
        raise InputError(f"{path.name}: --no-header needs the column names: --columns a,b,c "
                         f"(the first line has {len(first)} field(s): {', '.join(first[:8])})")
    if given and len(given) != len(first):
        if options.header:
            raise InputError(f"{path.name} line 1: {len(given)} column name(s) given for {len(first)} field(s)")
        raise InputError(f"{path.name} line 1: {len(given)} column name(s) given "
                         f"({', '.join(given)}) but the line has {len(first)} field(s) "
                         f"with delimiter {delimiter!r}: {sample.splitlines()[0][:120]!r}")
    if given:
        return tuple(given)
    if len(set(first)) != len(first) or any(not n.strip() for n in first):
        raise InputError(f"{path.name} line 1 has empty or repeated column names ({', '.join(first[:8])}): "
                         f"{header_hint(first, sample)}")
    return first


def _first_row(path: Path, kind: FileKind, data: bytes, delimiter: str, options: ReadOptions) -> tuple[str, ...]:
    """The first line's fields, parsed by pyarrow (quotes honoured when quoting is on)."""
    first = data.split(b"\n", 1)[0] + b"\n"
    parse = pcsv.ParseOptions(delimiter=delimiter, quote_char='"' if options.quoting else False)
    read = pcsv.ReadOptions(autogenerate_column_names=True, encoding=options.encoding)
    try:
        table = pcsv.read_csv(pa.py_buffer(first), read_options=read, parse_options=parse,
                              convert_options=pcsv.ConvertOptions(strings_can_be_null=False, column_types=AS_TEXT))
    except pa.ArrowInvalid as exc:
        if "UTF8" in str(exc):
            raise _utf8_error(path, kind, options.encoding) from exc
        raise InputError(f"{path.name} line 1 is not well-formed delimited text: {exc}") from exc
    if table.num_rows == 0:
        return ()
    return tuple("" if v is None else str(v) for v in table.slice(0, 1).to_pylist()[0].values())


def strip_types(names: tuple[str, ...], typed: bool) -> tuple[str, ...]:
    """RecBole's 'user_id:token' is the column 'user_id'."""
    return tuple(n.split(":", 1)[0] for n in names) if typed else names


def text_batches(path: Path, kind: FileKind, spec: TextSpec, block_size: int) -> Iterator[pa.RecordBatch]:
    """Every row of a delimited file as string columns, one pyarrow block at a time."""
    bad: list = []  # pyarrow's invalid rows: the first one's text finds its line for the error

    def on_invalid(row) -> str:
        bad.append(row)
        return "error"

    read = pcsv.ReadOptions(column_names=list(spec.names), skip_rows=1 if spec.header else 0,
                            block_size=block_size, encoding=spec.encoding)
    parse = pcsv.ParseOptions(delimiter=spec.delimiter, quote_char='"' if spec.quoting else False,
                              invalid_row_handler=on_invalid)
    convert = pcsv.ConvertOptions(column_types={n: pa.string() for n in spec.names},
                                  null_values=list(NULL_VALUES), strings_can_be_null=True)
    try:
        with open_stream(path, kind) as stream:
            yield from pcsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        raise _text_error(path, kind, spec, exc, bad) from exc
    except OSError as exc:
        raise InputError(f"{path.name} cannot be read ({kind.compression or 'uncompressed'}; truncated or corrupt?): {exc}") from exc


def _text_error(path: Path, kind: FileKind, spec: TextSpec, exc: Exception, bad: list) -> InputError:
    """pyarrow's parse error as one naming the line: a ragged row, or text that is not UTF-8."""
    message = str(exc)
    if bad:
        row = bad[0]
        line = _find_line(path, kind, spec.encoding, lambda text: text.rstrip("\r\n") == row.text)
        where = f"line {line}" if line else "a line"
        return InputError(
            f"{path.name} {where}: expected {row.expected_columns} columns, got {row.actual_columns} "
            f"({row.text[:120]!r}): a ragged row, or the wrong delimiter (reading with {spec.delimiter!r}, "
            f"{spec.delimiter_source}; columns: {', '.join(spec.names)})")
    if "invalid UTF8" in message or "UTF-8" in message or "decode" in message.lower():
        return _utf8_error(path, kind, spec.encoding)
    return InputError(f"{path.name} is not well-formed delimited text: {message}")


def _find_line(path: Path, kind: FileKind, encoding: str, match: Callable[[str], bool]) -> int | None:
    """The 1-based number of the first line that matches; streamed, so any file size is fine.
    (Only on the error path: pyarrow reports a bad row's text, not its line.)"""
    with open_stream(path, kind) as stream:
        reader = codecs.getreader(encoding)(stream, "replace")
        for number, text in enumerate(reader, start=1):
            if match(text):
                return number
    return None


def _utf8_error(path: Path, kind: FileKind, encoding: str) -> InputError:
    """Where the first byte that is not UTF-8 sits (offset and line), read block by block."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with open_stream(path, kind) as stream:
        while block := stream.read(1 << 20):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                local = max(exc.start - pending, 0)
                line += block[:local].count(b"\n")
                return InputError(f"{path.name} is not UTF-8 text: byte {block[local]:#04x} at offset {offset + local} "
                                  f"(line {line}); re-export it as UTF-8")
            line += block.count(b"\n")
            offset += len(block)
    return InputError(f"{path.name} is not {encoding} text")
