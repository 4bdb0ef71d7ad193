import hashlib
import os
import wave

import numpy as np
import pytest

from dualsparse.data import audio as A

REAL = os.environ.get("DUALSPARSE_DATA", "")
has_real = pytest.mark.skipif(
    not os.path.isfile(os.path.join(REAL, "fsdd", "SHA256SUMS")),
    reason="FSDD not available (set DUALSPARSE_DATA)",
)


def _write_wav(path, samples, rate=8000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, "<i2").tobytes())


def _fake_fsdd(root, n=3):
    rec = root / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    lines = []
    rng = np.random.default_rng(0)
    for i in range(n):
        p = rec / f"{i % 10}_theo_{i}.wav"
        _write_wav(p, rng.integers(-3000, 3000, 1000 + 300 * i))
        lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  recordings/{p.name}\n")
    (root / "fsdd" / "SHA256SUMS").write_text("".join(lines))
    return rec


def test_frontend_sine_and_shapes():
    fe = A.FrontEnd(window="rect", gain=1.0)
    t = np.arange(128 * 10) / 8000
    sine = 0.5 * np.sin(2 * np.pi * 1000 * t)  # bin 16 of a 128-point FFT at 8 kHz
    m = fe.magnitude(sine)
    assert m.shape == (10, 64) and np.allclose(m[:, 16], 1.0) and m[:, 15].max() < 1e-9
    f = fe(sine)
    assert f.shape == (64, 64) and f.dtype == np.float32
    assert (f[:54] == 0).all() and (f[54:] >= 0).all() and f.max() < 1  # right-aligned, in [0,1)
    for kind in ("logfft", "logmel"):
        g = A.FrontEnd(features=kind)(sine)
        assert g.shape == (64, 64 if kind == "logfft" else 32) and 0 <= g.min() and g.max() < 1


def test_frontend_errors():
    with pytest.raises(ValueError, match="features"):
        A.FrontEnd(features="mfcc")
    with pytest.raises(ValueError, match="power of two"):
        A.FrontEnd(frame=100)
    with pytest.raises(ValueError, match="NaN"):
        A.FrontEnd()(np.array([np.nan] * 256))
    with pytest.raises(ValueError, match="1-D"):
        A.FrontEnd()(np.zeros((2, 256)))


def test_verify_and_load_fake(tmp_path):
    rec = _fake_fsdd(tmp_path)
    cache = tmp_path / "cache"
    recs = A.verify_fsdd(tmp_path, cache, None, None)
    assert [r.index for r in recs] == [0, 1, 2] and recs[0].speaker == "theo"
    assert (cache / "fsdd_verified.json").is_file()
    fake = {"manifest_sha256": None, "expected_files": None}
    d = A.load_fsdd(A.FrontEnd(), tmp_path, cache, **fake)
    d2 = A.load_fsdd(A.FrontEnd(), tmp_path, cache, **fake)  # from the feature cache
    assert d.x.shape == (3, 64, 64) and np.array_equal(d.x, d2.x)
    with open(rec / "1_theo_1.wav", "r+b") as f:  # corrupt one byte
        f.seek(100)
        f.write(b"\x7f")
    with pytest.raises(ValueError, match="1_theo_1.wav"):
        A.verify_fsdd(tmp_path, cache, None, None)
    (rec / "1_theo_1.wav").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        A.verify_fsdd(tmp_path, cache, None, None)


def test_malformed_checksum_file_is_named(tmp_path):
    _fake_fsdd(tmp_path)
    sums = tmp_path / "fsdd" / "SHA256SUMS"
    sums.write_text(sums.read_text() + "recordings/9_theo_9.wav\n")  # digest missing
    with pytest.raises(ValueError, match="SHA256SUMS line 4"):
        A.verify_fsdd(tmp_path, tmp_path / "cache", None, None)


def test_missing_dataset_message(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="Jakobovski"):
        A.verify_fsdd(tmp_path / "nowhere", tmp_path)
    monkeypatch.delenv("DUALSPARSE_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="DUALSPARSE_DATA"):
        A.data_root()


def test_manifest_is_verified_before_it_is_trusted(tmp_path):
    """A trimmed SHA256SUMS would silently shrink the data set: its own hash and its file
    count are checked (by default against the real FSDD's)."""
    _fake_fsdd(tmp_path, n=3)
    sums = tmp_path / "fsdd" / "SHA256SUMS"
    good = hashlib.sha256(sums.read_bytes()).hexdigest()
    assert len(A.verify_fsdd(tmp_path, tmp_path / "c", good, 3)) == 3
    sums.write_text("".join(sums.read_text().splitlines(keepends=True)[:2]))  # trimmed
    with pytest.raises(ValueError, match="SHA256SUMS is not the FSDD manifest"):
        A.verify_fsdd(tmp_path, tmp_path / "c", good, 3)
    with pytest.raises(ValueError, match="lists 2 files, expected 3"):
        A.verify_fsdd(tmp_path, tmp_path / "c", None, 3)
    with pytest.raises(ValueError, match="not the FSDD manifest"):  # the defaults: real FSDD
        A.verify_fsdd(tmp_path, tmp_path / "c")


def test_wav_rate_check(tmp_path):
    _write_wav(tmp_path / "a.wav", np.zeros(100), rate=16000)
    with pytest.raises(ValueError, match="16000"):
        A.read_wav(tmp_path / "a.wav")


@has_real
def test_real_splits(tmp_path):
    d = A.load_fsdd(A.FrontEnd(), cache_dir=tmp_path)
    assert d.x.shape == (3000, 64, 64)
    r = A.split_fsdd(d, "random")
    assert (len(r["train"]), len(r["val"]), len(r["test"])) == (2400, 300, 300)
    assert (d.index[r["test"]] < 5).all()
    s = A.split_fsdd(d, "speaker", ("theo", "yweweler"))
    assert set(d.speaker[s["test"]]) == {"theo", "yweweler"}
    assert not set(d.speaker[s["train"]]) & {"theo", "yweweler"}
    with pytest.raises(ValueError, match="unknown"):
        A.split_fsdd(d, "speaker", ("bob",))
