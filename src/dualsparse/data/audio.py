"""Free Spoken Digit Dataset (FSDD) loader and the 8 kHz |FFT| front end of Amoh & Odame (2019).

Front end (:class:`FrontEnd`): 8 kHz mono audio, optionally peak-normalised, cut into
non-overlapping 128-sample frames (16 ms), windowed, ``|rfft|`` of each frame keeping bins 0..63
(the Nyquist bin is dropped), scaled so that a full-scale sine gives 1.0.  Each clip becomes a
fixed ``(n_frames, F)`` matrix: clips longer than ``n_frames`` frames keep their first frames,
shorter ones are zero-padded at the start so the utterance ends on the last step (the classifier
reads the final state).  Feature kinds, all mapped into ``[0, 1)`` so they fit Q15:

* ``"fft"``   (the paper's features): ``min(gain * |X|, 1 - 2**-15)``;
* ``"logfft"``: ``log(1 + |X| / eps) / log(1 + 1 / eps)``;
* ``"logmel"``: the same log compression of a triangular mel filter bank (``n_mels`` bands).

Data location: ``$DUALSPARSE_DATA/fsdd/recordings/*.wav`` with ``fsdd/SHA256SUMS``.  Every file is
checked against SHA256SUMS; a file's check is cached (keyed by size and mtime) under the cache
directory (``$DUALSPARSE_CACHE`` or ``~/.cache/dualsparse``), as are the extracted features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dualsparse.atomic import atomic_write_bytes
from dualsparse.validation import check_choice, check_int, check_real

FSDD_SOURCE = (
    "https://github.com/Jakobovski/free-spoken-digit-dataset (folder recordings/, commit "
    "26eb9aaf76e81b692f806f9140c2d2777410d7a1)"
)
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
SAMPLE_RATE = 8000
FEATURE_KINDS = ("fft", "logfft", "logmel")
_NAME_RE = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
_Q15_MAX = 1.0 - 2.0**-15


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` or ``$DUALSPARSE_DATA`` (error if neither is set)."""
    d = data_dir if data_dir is not None else os.environ.get("DUALSPARSE_DATA")
    if not d:
        raise FileNotFoundError(
            "FSDD not found: set DUALSPARSE_DATA (expects $DUALSPARSE_DATA/fsdd/recordings) or "
            f"pass data_dir. Get the recordings from {FSDD_SOURCE}."
        )
    return Path(d)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, ``$DUALSPARSE_CACHE`` or ``~/.cache/dualsparse``."""
    d = cache_dir or os.environ.get("DUALSPARSE_CACHE") or Path.home() / ".cache" / "dualsparse"
    return Path(d)


@dataclass(frozen=True)
class Recording:
    """One FSDD clip: file path, digit label 0..9, speaker name, take index 0..49."""

    path: Path
    digit: int
    speaker: str
    index: int


def verify_fsdd(
    data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> list[Recording]:
    """Check every file listed in ``fsdd/SHA256SUMS`` and return the recordings (sorted by name).

    Raises ``FileNotFoundError`` for a missing folder or file and ``ValueError`` for a checksum
    mismatch, naming the file.  Verified files are remembered (size + mtime) in the cache.
    """
    root = data_root(data_dir) / "fsdd"
    sums_path = root / "SHA256SUMS"
    if not (root / "recordings").is_dir() or not sums_path.is_file():
        raise FileNotFoundError(
            f"FSDD not found under {root} (need recordings/ and SHA256SUMS). "
            f"Get it from {FSDD_SOURCE} and set DUALSPARSE_DATA to the folder holding fsdd/."
        )
    sums_bytes = sums_path.read_bytes()
    expected: dict[str, str] = {}
    for lineno, line in enumerate(sums_bytes.decode(errors="replace").splitlines(), 1):
        if line.strip():
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
                raise ValueError(f"{sums_path} line {lineno} is not '<sha256> <file>': {line!r}")
            digest, name = parts
            expected[name.strip().lstrip("*")] = digest.lower()
    stamp_path = cache_root(cache_dir) / "fsdd_verified.json"
    try:
        stamps = json.loads(stamp_path.read_text())
        if not isinstance(stamps, dict):
            stamps = {}
    except (OSError, ValueError):
        stamps = {}
    changed = False
    recs = []
    for name, digest in sorted(expected.items()):
        p = root / name
        try:
            st = p.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"FSDD file missing: {p} (listed in {sums_path})") from None
        key = f"{p.resolve()}"
        stamp = [st.st_size, st.st_mtime_ns, digest]
        if stamps.get(key) != stamp:
            actual = hashlib.sha256(p.read_bytes()).hexdigest()
            if actual != digest:
                raise ValueError(f"FSDD file corrupt: {p} has sha256 {actual}, expected {digest}")
            stamps[key] = stamp
            changed = True
        m = _NAME_RE.match(Path(name).name)
        if m and name.startswith("recordings/"):
            recs.append(Recording(p, int(m.group(1)), m.group(2), int(m.group(3))))
    if not recs:
        raise FileNotFoundError(f"no recordings/*.wav listed in {sums_path}")
    if changed:
        try:
            atomic_write_bytes(stamp_path, json.dumps(stamps).encode())
        except OSError:
            pass  # an unwritable cache only costs time
    return recs


def read_wav(path: str | os.PathLike) -> np.ndarray:
    """Read a mono 16-bit PCM 8 kHz wav -> float32 ``(N,)`` in [-1, 1)."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected mono 16-bit PCM")
        if w.getframerate() != SAMPLE_RATE:
            raise ValueError(f"{path}: sample rate {w.getframerate()} Hz, expected {SAMPLE_RATE}")
        data = w.readframes(w.getnframes())
    return (np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0).copy()


def mel_filterbank(n_mels: int, n_bins: int = 64, frame: int = 128,
                   sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular mel filters ``(n_mels, n_bins)`` over rfft bins ``0..n_bins-1`` (HTK mel)."""
    check_int("n_mels", n_mels, low=1, high=n_bins)

    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    edges_mel = np.linspace(0.0, hz2mel(sample_rate / 2), n_mels + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0) * frame / sample_rate  # in bins
    k = np.arange(n_bins)[None, :]
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (k - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - k) / np.maximum(hi - mid, 1e-9)
    fb = np.clip(np.minimum(up, down), 0.0, None)
    fb[fb.sum(1) == 0, np.clip(np.rint(mid[fb.sum(1) == 0, 0]).astype(int), 0, n_bins - 1)] = 1.0
    return fb


@dataclass(frozen=True)
class FrontEnd:
    """Feature extraction settings (see module docstring). Output ``(n_frames, n_features)``."""

    features: str = "fft"
    frame: int = 128
    n_bins: int = 64
    n_frames: int = 64
    window: str = "hann"
    normalize_peak: bool = True
    gain: float = 4.0
    log_eps: float = 1e-3
    n_mels: int = 32

    def __post_init__(self) -> None:
        check_choice("features", self.features, FEATURE_KINDS)
        if check_int("frame", self.frame, low=1) & (self.frame - 1):
            raise ValueError(f"frame must be a positive power of two, got {self.frame}")
        check_int("n_bins", self.n_bins, low=1, high=self.frame // 2)
        check_int("n_frames", self.n_frames, low=1)
        check_choice("window", self.window, ("hann", "rect"))
        check_real("gain", self.gain, low=0.0, low_open=True)
        check_real("log_eps", self.log_eps, low=0.0, low_open=True)
        if self.features == "logmel":
            mel_filterbank(self.n_mels, self.n_bins, self.frame)

    @property
    def n_features(self) -> int:
        return self.n_mels if self.features == "logmel" else self.n_bins

    def magnitude(self, audio: np.ndarray) -> np.ndarray:
        """``|FFT|`` of non-overlapping frames: ``(N,)`` samples -> ``(N // frame, n_bins)``."""
        a = np.asarray(audio, dtype=np.float64)
        if a.ndim != 1:
            raise ValueError(f"audio must be 1-D (samples,), got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("audio contains NaN or inf")
        if self.normalize_peak:
            peak = np.abs(a).max() if a.size else 0.0
            a = a / peak if peak > 0 else a
        n = a.size // self.frame
        w = np.hanning(self.frame) if self.window == "hann" else np.ones(self.frame)
        fr = a[: n * self.frame].reshape(n, self.frame) * w
        return np.abs(np.fft.rfft(fr, axis=1))[:, : self.n_bins] * (2.0 / w.sum())

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Audio ``(N,)`` at 8 kHz -> features ``(n_frames, n_features)`` float32 in [0, 1)."""
        m = self.magnitude(audio)
        if self.features == "fft":
            f = m * self.gain
        else:
            if self.features == "logmel":
                m = m @ mel_filterbank(self.n_mels, self.n_bins, self.frame).T
            f = np.log1p(m / self.log_eps) / np.log1p(1.0 / self.log_eps)
        f = np.clip(f, 0.0, _Q15_MAX)[: self.n_frames]
        out = np.zeros((self.n_frames, self.n_features), dtype=np.float32)
        if len(f):
            out[self.n_frames - len(f):] = f
        return out

    def key(self) -> str:
        """Short stable hash of the settings (cache key)."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
                              ).hexdigest()[:16]


@dataclass
class FSDDFeatures:
    """Features ``x (N, T, F)`` float32, labels ``y (N,)``, ``speaker (N,)`` str, ``index (N,)``."""

    x: np.ndarray
    y: np.ndarray
    speaker: np.ndarray
    index: np.ndarray
    frontend: FrontEnd


def load_fsdd(
    frontend: FrontEnd | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> FSDDFeatures:
    """Verify FSDD, extract features for all 3,000 clips (cached) and return them."""
    fe = frontend or FrontEnd()
    recs = verify_fsdd(data_dir, cache_dir)
    sums = (data_root(data_dir) / "fsdd" / "SHA256SUMS").read_bytes()
    key = hashlib.sha256(sums + fe.key().encode()).hexdigest()[:20]
    cpath = cache_root(cache_dir) / f"fsdd_features_{key}.npz"
    y = np.array([r.digit for r in recs], dtype=np.int64)
    spk = np.array([r.speaker for r in recs])
    idx = np.array([r.index for r in recs], dtype=np.int64)
    if use_cache and cpath.is_file():
        try:
            with np.load(cpath, allow_pickle=False) as z:
                x = z["x"]
                if x.shape == (len(recs), fe.n_frames, fe.n_features) and np.array_equal(
                    z["y"], y
                ):
                    return FSDDFeatures(x, y, spk, idx, fe)
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: recompute
    x = np.stack([fe(read_wav(r.path)) for r in recs])
    if use_cache:
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        try:
            atomic_write_bytes(cpath, buf.getvalue())
        except OSError:
            pass
    return FSDDFeatures(x, y, spk, idx, fe)


def split_fsdd(
    data: FSDDFeatures,
    split: str = "random",
    test_speakers: tuple[str, ...] = ("theo", "yweweler"),
    val_takes: tuple[int, int] = (5, 10),
) -> dict[str, np.ndarray]:
    """Index arrays ``{"train", "val", "test"}`` into ``data``.

    * ``"random"``: the official split, takes 0-4 of every speaker are test, 5-49 train.
    * ``"speaker"``: all clips of ``test_speakers`` are test; the rest train (speaker-held-out).

    In both cases training clips with take index in ``[val_takes[0], val_takes[1])`` form the
    validation set (checkpoint selection) and are removed from train.
    """
    if split == "random":
        test = data.index < 5
    elif split == "speaker":
        unknown = set(test_speakers) - set(data.speaker.tolist())
        if not test_speakers or unknown:
            raise ValueError(f"test_speakers must be FSDD speakers, unknown: {sorted(unknown)}")
        test = np.isin(data.speaker, list(test_speakers))
        if test.all():
            raise ValueError("test_speakers leaves no training speaker")
    else:
        raise ValueError(f"split must be 'random' or 'speaker', got {split!r}")
    lo, hi = val_takes
    val = ~test & (data.index >= lo) & (data.index < hi)
    train = ~test & ~val
    return {k: np.flatnonzero(v) for k, v in (("train", train), ("val", val), ("test", test))}
