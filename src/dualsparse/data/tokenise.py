"""Tokenising word-level corpora (pytorch/examples ``word_language_model`` rules) and the cache
of the resulting token-id tensors.

Each line is ``line.split()`` followed by one ``<eos>``; ids follow first appearance over train,
then valid, then test.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dualsparse.atomic import atomic_path

logger = logging.getLogger(__name__)

EOS = "<eos>"
SPLITS: tuple[str, ...] = ("train", "valid", "test")
TOKEN_CACHE_VERSION = 1


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
    key = hashlib.sha256(
        "|".join([f"v{TOKEN_CACHE_VERSION}"] + [sha256[s].lower() for s in SPLITS]).encode()
    ).hexdigest()[:20]
    return cache_folder / f"tokens-{key}.pt"


def load_token_cache(path: Path, sha256: Mapping[str, str]) -> Tokenised | None:
    """Load and validate a token cache; ``None`` if absent, unreadable or inconsistent."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return _check_token_blob(blob, sha256)
    except Exception as exc:  # any failure means: rebuild
        logger.warning("ignoring corrupt token cache %s (%s); rebuilding", path, exc)
        return None


def _check_token_blob(blob: object, sha256: Mapping[str, str]) -> Tokenised:
    if not isinstance(blob, dict) or blob.get("version") != TOKEN_CACHE_VERSION:
        raise ValueError("unexpected layout or version")
    if blob.get("sha256") != {s: sha256[s].lower() for s in SPLITS}:
        raise ValueError("hashes do not match the source files")
    words = blob["words"]
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError("bad word list")
    vocab = Vocabulary(words)
    if len(vocab) != len(words):
        raise ValueError("duplicate words")
    tensors = {}
    for split in SPLITS:
        ids = blob[split]
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.dim() != 1:
            raise ValueError(f"bad tensor for {split}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(vocab)):
            raise ValueError(f"ids out of range in {split}")
        tensors[split] = ids
    return vocab, tensors


def save_token_cache(
    path: Path, sha256: Mapping[str, str], vocab: Vocabulary, tensors: Mapping[str, torch.Tensor]
) -> None:
    """Write the token cache atomically; failures (e.g. read-only cache) only log a warning."""
    blob = {
        "version": TOKEN_CACHE_VERSION,
        "sha256": {s: sha256[s].lower() for s in SPLITS},
        "words": list(vocab.words),
        **{s: tensors[s] for s in SPLITS},
    }
    try:
        with atomic_path(path, suffix=".part") as tmp:
            torch.save(blob, tmp)
    except OSError as exc:
        logger.warning("could not write token cache %s: %s", path, exc)


__all__ = ["EOS", "SPLITS", "Corpus", "Tokenised", "Vocabulary", "load_token_cache",
           "save_token_cache", "token_cache_path", "tokenize_files"]
