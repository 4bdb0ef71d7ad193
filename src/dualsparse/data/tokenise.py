"""Tokenising word-level corpora (pytorch/examples ``word_language_model`` rules) and the cache
of the resulting token-id tensors (a numpy ``.npz`` read without pickle, checked against the
source files' hashes and its own content hash).

Each line is ``line.split()`` followed by one ``<eos>``; ids follow first appearance over train,
then valid, then test.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dualsparse.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

EOS = "<eos>"
SPLITS: tuple[str, ...] = ("train", "valid", "test")
TOKEN_CACHE_VERSION = 2


class Vocabulary:
    """Bidirectional word <-> id map; ids are assigned in order of first appearance."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        self.words: list[str] = []
        self.index: dict[str, int] = {}
        for word in words:
            self.add(word)

    def add(self, word: str) -> int:
        """Return the id of ``word``, adding it at the end if new."""
        if word not in self.index:
            self.index[word] = len(self.words)
            self.words.append(word)
        return self.index[word]

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __iter__(self) -> Iterator[str]:
        return iter(self.words)

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)})"

    def encode(self, words: Iterable[str]) -> torch.Tensor:
        """Words -> ids, shape ``(len(words),)``, ``torch.long``; unknown words raise KeyError."""
        return torch.tensor([self.index[w] for w in words], dtype=torch.long)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        """Ids (any 1-D iterable or tensor) -> words."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        return [self.words[i] for i in ids]


@dataclass
class Corpus:
    """A tokenised corpus: 1-D ``torch.long`` token-id tensors per split and their vocabulary."""

    name: str
    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    paths: dict[str, Path] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)

    def split(self, name: str) -> torch.Tensor:
        """Token ids of split ``name`` (``train``, ``valid`` or ``test``), shape ``(N,)``."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
        return getattr(self, name)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.split(s).numel():,}" for s in SPLITS)
        return f"Corpus(name={self.name!r}, vocab={len(self.vocab):,}, {sizes})"


Tokenised = tuple[Vocabulary, dict[str, torch.Tensor]]
"""A vocabulary and ``{split: ids}``."""


def _encode_file(path: Path, index: dict[str, int]) -> torch.Tensor:
    """Token ids of one file, adding new words to ``index``; shape ``(tokens,)``, long."""
    ids: list[int] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = line.split()
            words.append(EOS)
            ids.extend([index.setdefault(w, len(index)) for w in words])
    return torch.tensor(ids, dtype=torch.long)


def tokenize_files(paths: Mapping[str, str | os.PathLike[str]]) -> Tokenised:
    """Tokenise split files in order (train, valid, test), building one shared vocabulary.

    Ids follow first appearance over train, then valid, then test (as pytorch/examples).
    Returns the vocabulary and ``{split: ids}`` with ids of shape ``(tokens,)``, ``torch.long``.
    """
    index: dict[str, int] = {}
    tensors = {split: _encode_file(Path(paths[split]), index) for split in SPLITS}
    return Vocabulary(index), tensors


def token_cache_path(cache_folder: Path, sha256: Mapping[str, str]) -> Path:
    """The token cache file of the corpus files with hashes ``sha256`` (``.npz``)."""
    key = hashlib.sha256(
        "|".join([f"v{TOKEN_CACHE_VERSION}"] + [sha256[s].lower() for s in SPLITS]).encode()
    ).hexdigest()[:20]
    return cache_folder / f"tokens-{key}.npz"


def _content_hash(words: bytes, ids: Mapping[str, np.ndarray]) -> str:
    """sha256 of the word list (UTF-8, newline-separated) and the little-endian int64 ids."""
    h = hashlib.sha256(words)
    for split in SPLITS:
        h.update(split.encode())
        h.update(np.ascontiguousarray(ids[split], dtype="<i8").tobytes())
    return h.hexdigest()


def load_token_cache(path: Path, sha256: Mapping[str, str]) -> Tokenised | None:
    """Load and validate a token cache (numpy ``.npz``, no pickle); ``None`` if absent,
    unreadable, or not matching its source hashes or its content hash (a warning says why)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            blob = {k: z[k] for k in z.files}
        return _check_token_blob(blob, sha256)
    except Exception as exc:  # any failure means: rebuild
        logger.warning("ignoring token cache %s (%s); rebuilding", path, exc)
        return None


def _check_token_blob(blob: Mapping[str, np.ndarray], sha256: Mapping[str, str]) -> Tokenised:
    meta = json.loads(str(blob["meta"]))
    if not isinstance(meta, dict) or meta.get("version") != TOKEN_CACHE_VERSION:
        raise ValueError("unexpected layout or version")
    if meta.get("sha256") != {s: sha256[s].lower() for s in SPLITS}:
        raise ValueError("hashes do not match the source files")
    raw = blob["words"]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError("bad word list")
    ids = {split: blob[split] for split in SPLITS}
    for split, arr in ids.items():
        if arr.dtype != np.int64 or arr.ndim != 1:
            raise ValueError(f"bad id array for {split}")
    if _content_hash(raw.tobytes(), ids) != meta.get("content_sha256"):
        raise ValueError("its content does not match its content hash (modified or damaged)")
    words = raw.tobytes().decode("utf-8").split("\n") if raw.size else []
    vocab = Vocabulary(words)
    if len(vocab) != len(words):
        raise ValueError("duplicate words")
    tensors = {}
    for split, arr in ids.items():
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= len(vocab)):
            raise ValueError(f"ids out of range in {split}")
        tensors[split] = torch.from_numpy(arr.copy())
    return vocab, tensors


def save_token_cache(
    path: Path, sha256: Mapping[str, str], vocab: Vocabulary, tensors: Mapping[str, torch.Tensor]
) -> None:
    """Write the token cache atomically as ``.npz`` with the source files' hashes and a
    content hash; failures (e.g. read-only cache) only log a warning."""
    words = "\n".join(vocab.words).encode("utf-8")
    ids = {s: tensors[s].cpu().numpy().astype("<i8") for s in SPLITS}
    meta = {"version": TOKEN_CACHE_VERSION, "sha256": {s: sha256[s].lower() for s in SPLITS},
            "content_sha256": _content_hash(words, ids)}
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)),
             words=np.frombuffer(words, dtype=np.uint8), **ids)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        logger.warning("could not write token cache %s: %s", path, exc)


__all__ = ["EOS", "SPLITS", "Corpus", "Tokenised", "Vocabulary", "load_token_cache",
           "save_token_cache", "token_cache_path", "tokenize_files"]
