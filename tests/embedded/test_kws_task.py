import argparse
import json
import os

import pytest

from dualsparse.train import kws_task

pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(os.environ.get("DUALSPARSE_DATA", ""), "fsdd", "SHA256SUMS")),
    reason="FSDD not available (set DUALSPARSE_DATA)",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kws_cache")


@pytest.mark.parametrize("model", ["gru", "egru-q"])
def test_tiny_run(model, tmp_path, monkeypatch, cache):
    monkeypatch.setenv("DUALSPARSE_CACHE", str(cache))
    p = argparse.ArgumentParser()
    kws_task.add_arguments(p)
    args = p.parse_args(["--model", model, "--epochs", "1", "--max-train", "32", "--hidden", "8",
                         "--split", "speaker", "--threads", "1", "--out", str(tmp_path / "o")])
    m = kws_task.run(args)
    assert 0 <= m["test_acc"] <= 1 and m["n_test"] == 1000
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["model"] == model
    if model == "egru-q":
        assert m["deployed_agreement"] >= 0.9 and m["deployed_bytes"] < m["float_bytes"]
        assert (tmp_path / "o" / "c" / "egru.c").is_file()
