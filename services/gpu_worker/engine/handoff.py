"""The KV hand-off area: how a prefill worker leaves a request's KV cache for a decode worker
on the same machine (disaggregated mode), one file per request.

    area = HandoffArea(Path("/dev/shm/tokenpool-kv"))
    engine.export_kv("r1", area.path("r1"))              # prefill worker, after r1's first token
    engine.add_request(request, kv_entry=area.path("r1"))  # decode worker; raises KvHandoffError
    area.remove("r1")                                     # once imported (or refused)

An entry is `MAGIC`, the header's length (4 bytes, little endian), the header as JSON, then
the raw KV pages of the request's cached tokens, as the engine's arena holds them. It is
written under a temporary name and renamed, so a reader sees a whole entry or none. The
header names what a reader must share with the writer to use the pages as they are (model,
tokens per page, page size, dtype) and which tokens they hold; any difference, a short file or
a missing one raises a KvHandoffError, and the caller recomputes the request from its tokens.
Entries nobody imported (the request was cancelled in between) are swept after `max_age_s`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import EngineError

FORMAT_VERSION = 1
MAGIC = b"TPKV"
ENTRY_SUFFIX = ".kv"
TEMP_SUFFIX = ".tmp"
DEFAULT_MAX_AGE_S = 60.0
_LENGTH = struct.Struct("<I")
_MAX_HEADER_BYTES = 1 << 16
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


class KvHandoffError(EngineError):
    """A KV entry cannot be written, read or imported; the request is recomputed instead."""


class KvEntryMissingError(KvHandoffError):
    """No entry of that name (never written, swept, or written on another machine)."""


class KvEntryCorruptError(KvHandoffError):
    """The file is not a KV entry, or a truncated one."""


class KvEntryMismatchError(KvHandoffError):
    """The entry was written for another model, page size, dtype or other tokens."""


class KvNoRoomError(KvHandoffError):
    """Neither device pages nor host swap pages are free for the entry's pages."""


@dataclass(frozen=True)
class KvShape:
    """What a reader must share with the writer to use the pages as they are."""

    model: str
    block_tokens: int
    """Tokens one page holds for the model."""
    page_bytes: int
    dtype: str
    """torch dtype name without the "torch." prefix: float32, bfloat16, float16."""


@dataclass(frozen=True)
class EntryHeader:
    shape: KvShape
    cached_tokens: int
    """Tokens whose K/V the pages hold: the first `cached_tokens` of the request's tokens."""
    pages: int
    tokens_sha256: str
    """Digest of those tokens, so that KV is never attached to other tokens."""
    prompt_cache_hits: int = 0
    """Prompt tokens the writer took from its prefix cache: the decode side reports them as
    the request's cached tokens. (Optional in the header: a writer before it wrote none.)"""
    version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        fields = asdict(self.shape) | {
            "cached_tokens": self.cached_tokens,
            "pages": self.pages,
            "tokens_sha256": self.tokens_sha256,
            "prompt_cache_hits": self.prompt_cache_hits,
            "version": self.version,
        }
        return json.dumps(fields, separators=(",", ":")).encode()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tokens_digest(token_ids) -> str:
    return hashlib.sha256(",".join(str(int(t)) for t in token_ids).encode()).hexdigest()


def write_entry(path: Path, header: EntryHeader, pages: torch.Tensor) -> None:
    """Writes the entry atomically. `pages`: a CPU tensor of shape (header.pages, page elements)."""
    if pages.device.type != "cpu" or pages.shape[0] != header.pages:
        raise ValueError(f"expected {header.pages} pages in host memory, got {tuple(pages.shape)} on {pages.device}")
    if pages.numel() * pages.element_size() != header.pages * header.shape.page_bytes:
        raise ValueError(f"pages of {pages.shape[1] * pages.element_size()} bytes, header says {header.shape.page_bytes}")
    path = Path(path)
    meta = header.to_json()
    temp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(temp, "wb") as f:
            f.write(MAGIC + _LENGTH.pack(len(meta)) + meta)
            f.write(pages.contiguous().view(torch.uint8).numpy())
        os.replace(temp, path)
    except OSError as e:
        temp.unlink(missing_ok=True)
        raise KvHandoffError(f"could not write KV entry {path}: {e}") from None


def read_entry(path: Path, shape: KvShape, token_ids) -> tuple[EntryHeader, torch.Tensor]:
    """The entry's header and its pages as a CPU tensor of `shape.dtype`.

    Checks every header field against `shape` and the request's `token_ids`: the entry must
    hold a proper prefix of them (the last token's K/V is what the next step computes).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = _read_header(f, path)
            _check(header, shape, token_ids, path)
            size = header.pages * shape.page_bytes
            data = bytearray(size)
            got = f.readinto(data)
            if got != size or f.read(1):
                raise KvEntryCorruptError(
                    f"KV entry {path} is truncated or too long: {header.pages} pages need {size} bytes, "
                    f"the file holds {got if got != size else 'more'}"
                )
    except FileNotFoundError:
        raise KvEntryMissingError(f"no KV entry {path}") from None
    except OSError as e:
        raise KvHandoffError(f"could not read KV entry {path}: {e}") from None
    dtype = getattr(torch, shape.dtype)
    return header, torch.frombuffer(data, dtype=torch.uint8).view(dtype).view(header.pages, -1)


def _read_header(f, path: Path) -> EntryHeader:
    prefix = f.read(len(MAGIC) + _LENGTH.size)
    if len(prefix) < len(MAGIC) + _LENGTH.size or not prefix.startswith(MAGIC):
        raise KvEntryCorruptError(f"{path} is not a KV entry (no {MAGIC!r} header)")
    (length,) = _LENGTH.unpack(prefix[len(MAGIC) :])
    raw = f.read(length) if length <= _MAX_HEADER_BYTES else b""
    if len(raw) != length:
        raise KvEntryCorruptError(f"KV entry {path} is truncated in its header")
    try:
        fields = json.loads(raw)
        if fields.get("version") != FORMAT_VERSION:
            raise KvEntryMismatchError(
                f"KV entry {path} has format version {fields.get('version')!r}; this worker reads {FORMAT_VERSION}"
            )
        shape = KvShape(str(fields["model"]), int(fields["block_tokens"]), int(fields["page_bytes"]), str(fields["dtype"]))
        hits = int(fields.get("prompt_cache_hits", 0))
        if hits < 0:
            raise ValueError(f"prompt_cache_hits is {hits}")
        return EntryHeader(
            shape, int(fields["cached_tokens"]), int(fields["pages"]), str(fields["tokens_sha256"]), hits
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise KvEntryCorruptError(f"KV entry {path} has a malformed header ({type(e).__name__}: {e})") from None


def _check(header: EntryHeader, shape: KvShape, token_ids, path: Path) -> None:
    for field, theirs in asdict(header.shape).items():
        ours = getattr(shape, field)
        if theirs != ours:
            raise KvEntryMismatchError(f"KV entry {path} has {field}={theirs!r}; this engine needs {field}={ours!r}")
    cached, total = header.cached_tokens, len(token_ids)
    if not 0 < cached < total:
        raise KvEntryMismatchError(
            f"KV entry {path} holds {cached} tokens; a request of {total} tokens can use 1 to {total - 1} of them"
        )
    if header.pages != -(-cached // shape.block_tokens):
        raise KvEntryCorruptError(f"KV entry {path}: {header.pages} pages cannot hold exactly {cached} tokens")
    if header.tokens_sha256 != tokens_digest(token_ids[:cached]):
        raise KvEntryMismatchError(f"KV entry {path} holds the KV of other tokens than the request's first {cached}")


class HandoffArea:
    """One machine's hand-off directory: entry names (request ids) to files, and the sweep."""

    def __init__(self, directory: Path, max_age_s: float = DEFAULT_MAX_AGE_S):
        self.directory = Path(directory)
        self.max_age_s = max_age_s

    def path(self, name: str) -> Path:
        """The entry's file. Names that are not plain file names (they come off the bus) map to
        a digest, so no name can point outside the area."""
        if not name:
            raise ValueError("a KV entry needs a name")
        stem = name if _SAFE_NAME.match(name) else "h-" + hashlib.sha256(name.encode()).hexdigest()
        return self.directory / (stem + ENTRY_SUFFIX)

    def remove(self, name: str) -> None:
        try:
            self.path(name).unlink(missing_ok=True)
        except OSError:
            pass  # a read-only or vanished area: the sweep, or nobody, cleans up

    def sweep(self, now: float) -> int:
        """Deletes entries (and temporary files of crashed writers) last written before
        now - max_age_s (wall-clock seconds, as file times are). Returns how many went."""
        removed = 0
        try:
            files = list(os.scandir(self.directory))
        except OSError:
            return 0
        for entry in files:
            if not entry.name.endswith((ENTRY_SUFFIX, TEMP_SUFFIX)):
                continue
            try:
                if entry.stat().st_mtime < now - self.max_age_s:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue  # imported or swept by another worker meanwhile
        return removed
