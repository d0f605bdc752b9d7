"""Reading user files with errors that name the file, the line and what to change.

Every adapter reads through `read_table`, so missing files, wrong encodings, empty files and
malformed CSV all fail the same clear way instead of as a pandas traceback.
"""

from __future__ import annotations

import codecs
import io
from pathlib import Path

import pandas as pd

from shopflow.core.errors import EmptyDataError, SourceError, preview

SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": None}
MAX_FIELD_BYTES = 64 * 1024 * 1024


def _check_encoding(path: Path, raw: bytes, encoding: str) -> None:
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        decoder.decode(raw, final=True)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start : exc.start + 4]
        raise SourceError(
            f"{path}: not valid {encoding} at byte {exc.start:,} (line {line}): {bad!r}. "
            f"If the file uses another encoding, set ingest.encoding (e.g. latin-1) in params.yaml"
        ) from None


def read_table(path: str | Path, encoding: str = "utf-8", sep: str | None = None) -> pd.DataFrame:
    """Read a CSV/TSV/parquet/JSON-lines file as strings-or-native columns, or fail clearly."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: file not found")
    if path.is_dir():
        raise SourceError(f"{path}: is a folder, expected a file")
    suffix = "".join(path.suffixes[-2:]) if path.suffix in {".zip", ".gz"} else path.suffix
    base = suffix.split(".")[1] if suffix.count(".") > 1 else suffix.lstrip(".")
    try:
        if base == "parquet":
            frame = pd.read_parquet(path)
        elif base in {"jsonl", "ndjson"}:
            frame = pd.read_json(path, lines=True, dtype=False, encoding=encoding)
        elif base in {"csv", "tsv", "txt"}:
            compression: str | None = "infer"
            if path.suffix not in {".zip", ".gz"}:
                raw = path.read_bytes()
                _check_encoding(path, raw, encoding)
                source: object = io.BytesIO(raw)
                compression = None
            else:
                source = path
            delimiter = sep or SUFFIXES.get(f".{base}") or None
            frame = pd.read_csv(
                source,
                sep=delimiter,
                engine="python" if delimiter is None else "c",
                encoding=encoding,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                compression=compression,
            )
        else:
            raise SourceError(
                f"{path}: unsupported file type {path.suffix!r} (use csv, tsv, parquet or jsonl)"
            )
    except SourceError:
        raise
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{path}: not valid {encoding} ({exc.reason} at byte {exc.start:,}); "
            f"set ingest.encoding in params.yaml"
        ) from None
    except pd.errors.EmptyDataError:
        raise EmptyDataError(f"{path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SourceError(f"{path}: cannot be parsed: {preview(said, 300)}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    # Number rows as a person finds them: the file's line (a CSV's header is line 1; exact
    # unless a quoted field spans lines), or the 1-based row of a parquet file.
    first = {"csv": 2, "tsv": 2, "txt": 2, "jsonl": 1, "ndjson": 1}.get(base, 1)
    unit = "row" if base == "parquet" else "line"
    frame.index = pd.RangeIndex(first, first + len(frame), name=unit)
    return frame


def apply_mapping(
    frame: pd.DataFrame, mapping: dict[str, str], origin: str, wanted: tuple[str, ...]
) -> pd.DataFrame:
    """Rename source columns to contract names. `mapping` is contract name -> source column.

    Unmapped contract names are taken as-is when the source already uses them. A mapping that
    names a column the file does not have is an error naming both.
    """
    missing = {dest: src for dest, src in mapping.items() if src not in frame.columns}
    if missing:
        pairs = ", ".join(f"{dest} <- {src!r}" for dest, src in missing.items())
        found = ", ".join(frame.columns)
        raise SourceError(f"{origin}: mapped column(s) not in the file: {pairs} (found: {found})")
    unknown = set(mapping) - set(wanted)
    if unknown:
        raise SourceError(
            f"{origin}: ingest.mapping has unknown target(s) {sorted(unknown)}; "
            f"known: {', '.join(wanted)}"
        )
    renamed = frame.rename(columns={src: dest for dest, src in mapping.items()})
    keep = [c for c in wanted if c in renamed.columns]
    return renamed[keep]


def require_rows(frame: pd.DataFrame, origin: str, what: str) -> pd.DataFrame:
    if frame.empty:
        raise EmptyDataError(f"{origin}: no {what} rows")
    return frame
