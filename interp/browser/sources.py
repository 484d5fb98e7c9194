"""Where a harvest reads from: texts in memory, a text or JSONL file (gzipped or not) streamed line by line,
or activation shards (`interp.activation_shards`), with a fingerprint so a resumed harvest knows it is
reading the same corpus.

Files are never read whole: `text_chunks` yields `chunk_docs` texts at a time. `check_corpus` reads only
the first records (so a bad file is refused before a model loads); a malformed line further on is an
error naming the file and line when the harvest reaches it (a checkpoint keeps the work done until then).
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from interp.corpus import record_text

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".txt.gz", ".jsonl.gz", ".json.gz")
_PEEK = 16  # records read by check_corpus


@dataclass(frozen=True)
class Corpus:
    """A checked corpus: texts in memory, a file of texts, or a shard folder."""

    kind: str  # "texts", "file" or "shards"
    texts: Sequence[str] | None = None
    path: Path | None = None
    shards: Any = None  # interp.activation_shards.ResidualShards

    def describe(self) -> dict[str, Any]:
        """What the browser's pages say about the corpus, and what a resumed harvest must match."""
        if self.kind == "texts":
            assert self.texts is not None
            digest = hashlib.sha256()
            for text in self.texts:
                digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
            return {"kind": "texts", "n_texts": len(self.texts), "sha256": digest.hexdigest()}
        if self.kind == "file":
            assert self.path is not None
            stat = self.path.stat()
            return {"kind": "file", "path": str(self.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        return {"kind": "shards", "path": str(Path(self.shards.folder).resolve()), "n_rows": len(self.shards),
                "model": self.shards.manifest.get("model"), "site": self.shards.manifest.get("site"),
                "positions": self.shards.manifest.get("positions")}


def check_corpus(corpus: Any, argument: str = "corpus") -> Corpus:
    """`corpus` as a `Corpus`, or an error naming `argument`: a non-empty list of strings, a text/JSONL file
    (optionally .gz) whose first records are readable, a shard folder, or opened `ResidualShards`."""
    from interp.activation_shards import MANIFEST_FILE, ResidualShards, open_residual_shards

    if isinstance(corpus, ResidualShards):
        return Corpus("shards", shards=corpus)
    if isinstance(corpus, (str, Path)):
        path = Path(corpus).expanduser()
        if path.is_dir():
            if not (path / MANIFEST_FILE).is_file():
                raise ValueError(f"{argument}: {path} is a folder but not an activation shard folder (no {MANIFEST_FILE})")
            return Corpus("shards", shards=open_residual_shards(path))
        if not path.is_file():
            raise FileNotFoundError(f"{argument}: no corpus file at {path}")
        if not path.name.endswith(TEXT_SUFFIXES):
            raise ValueError(f"{argument}: {path}: expected a text or JSONL file ({', '.join(TEXT_SUFFIXES)})")
        peeked = [text for _, text in zip(range(_PEEK), iter_file(path, argument))]
        if not peeked:
            raise ValueError(f"{argument}: {path} holds no texts")
        return Corpus("file", path=path)
    if isinstance(corpus, Sequence) and not isinstance(corpus, (bytes, bytearray)):
        if not corpus:
            raise ValueError(f"{argument}: expected at least one text")
        if any(not isinstance(text, str) for text in corpus):
            raise ValueError(f"{argument}: every item must be a string")
        return Corpus("texts", texts=corpus)
    raise TypeError(f"{argument}: expected texts, a text/JSONL file, or activation shards; got {type(corpus).__name__}")


def _open(path: Path) -> TextIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def iter_file(path: Path, argument: str = "corpus") -> Iterator[str]:
    """The texts of a file, one per line: a JSONL record's "text", or the line itself in a plain text file.
    Blank lines are skipped (as `interp.corpus.load_corpus` does)."""
    jsonl = path.name.removesuffix(".gz").endswith((".jsonl", ".json"))
    try:
        with _open(path) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                yield record_text(line, f"{argument}: {path}:{number}") if jsonl else line.rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"{argument}: {path} is not UTF-8 text (byte {error.start}): a binary file?") from None
    except (OSError, EOFError) as error:  # a truncated or corrupt .gz
        raise ValueError(f"{argument}: {path} could not be read ({error})") from None


def text_chunks(corpus: Corpus, chunk_docs: int, max_docs: int | None = None) -> Iterator[list[str]]:
    """The corpus's texts, `chunk_docs` at a time, in corpus order (at most `max_docs` in all)."""
    texts: Iterator[str] = iter(corpus.texts) if corpus.kind == "texts" else iter_file(corpus.path)  # type: ignore[arg-type]
    chunk: list[str] = []
    for index, text in enumerate(texts):
        if max_docs is not None and index >= max_docs:
            break
        chunk.append(text)
        if len(chunk) == chunk_docs:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
