"""`examples/kws_m0.py` (apps.kws.m0_report) on two tiny FSDD runs: the M0 classifies the whole
test split bit-exactly like the integer references; mismatched runs and an existing --out are
refused."""

import argparse
import json
import os

import pytest

from dualsparse.apps.kws import commands as kws
from dualsparse.apps.kws import m0_report
from dualsparse.embedded import cortex_m0 as m0

pytestmark = [
    pytest.mark.skipif(m0.m0_tools() is None, reason="arm-none-eabi-gcc / qemu-system-arm missing"),
    pytest.mark.skipif(
        not os.path.isfile(os.path.join(os.environ.get("DUALSPARSE_DATA", ""), "fsdd",
                                        "SHA256SUMS")),
        reason="FSDD not available (set DUALSPARSE_DATA)"),
]


def _run(tmp_path, model, split="random", dense=""):
    out = tmp_path / f"{model}_{split}_{dense}"
    p = argparse.ArgumentParser()
    kws.add_arguments(p)
    kws.run(p.parse_args(["--model", model, "--epochs", "1", "--max-train", "32", "--hidden",
                          "6", "--split", split, "--threads", "1", "--batch-size", "16",
                          "--no-progress", "--out", str(out), "--dense", dense]))
    return out


@pytest.mark.timeout(900)
@pytest.mark.parametrize("dense", ["", "5"])
def test_m0_report_whole_test_split(tmp_path, monkeypatch, dense):
    monkeypatch.setenv("DUALSPARSE_CACHE", str(tmp_path / "cache"))
    e, g = _run(tmp_path, "egru-q", dense=dense), _run(tmp_path, "gru", dense=dense)
    out = tmp_path / "m0.json"
    res = m0_report.main(["--egru", str(e), "--gru", str(g), "--out", str(out),
                          "--float-clips", "3"])
    assert json.loads(out.read_text())["ratios"] == res["ratios"]
    assert res["dense"] == ([5] if dense else []) and res["hidden"] == [6]
    metrics = json.loads((e / "metrics.json").read_text())
    for name in ("egru_3bit", "gru_int8"):
        r = res[name]
        assert r["n_m0"] == res["n_test"] == 300 and r["m0_bit_exact"]
        assert r["accuracy_m0"] == r["accuracy_reference"]
        assert r["instructions"] > 1000 and r["cycles_m0plus"] > r["instructions"]
        assert 0 < r["weight_bytes"] <= r["model_flash"]
    assert res["egru_3bit"]["accuracy_reference"] == metrics["deployed_test_acc"]
    assert res["egru_3bit"]["weight_bytes"] == metrics["deployed_bytes"]
    f = res["gru_float"]
    assert f["n_m0"] == 3 and f["m0_class_equals_torch"] and f["max_abs_logit_diff_vs_torch"] < 1e-4
    with pytest.raises(ValueError, match="never overwritten"):
        m0_report.main(["--egru", str(e), "--gru", str(g), "--out", str(out)])
    with pytest.raises(ValueError, match="differ in"):
        m0_report.report(str(e), str(_run(tmp_path, "gru", "speaker", dense)))
    if dense:  # the eGRU and the GRU must have the same architecture
        with pytest.raises(ValueError, match=r"differ in \['dense'\]"):
            m0_report.report(str(e), str(_run(tmp_path, "gru")))
