"""The README's prune -> pack -> run example for a plain torch.nn.LSTM runs and is exact."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_prune_pack_run_example() -> None:
    text = README.read_text()
    section = text[text.index("Prune -> pack -> run"):]
    code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # the README's own code
    lstm, x, out = scope["lstm"], scope["x"], scope["out"]
    weights = [p for n, p in lstm.named_parameters() if n.startswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert abs(zeros - 0.8) < 0.01
    with torch.no_grad():
        torch.testing.assert_close(out, lstm(x)[0], rtol=0, atol=1e-5)
