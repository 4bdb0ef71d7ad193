"""The KWS tables in docs/embedded.md are the committed results: each block marked
``<!-- table: copied from F -->`` equals ``F``, and each committed ``summary.md`` is what
:func:`table.summarise` makes of the per-run files beside it."""

import re
import shutil
from pathlib import Path

import pytest

from dualsparse.apps.kws import table

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "embedded.md"
BLOCK = re.compile(r"<!-- table: copied from (\S+) -->\n(.*?)<!-- end table -->", re.S)


def _blocks() -> list[tuple[str, str]]:
    return BLOCK.findall(DOC.read_text())


def test_the_doc_has_the_tables() -> None:
    names = [name for name, _ in _blocks()]
    assert "docs/results/kws/summary.md" in names and "docs/results/kws/aug/summary.md" in names


@pytest.mark.parametrize("name, text", _blocks())
def test_each_doc_table_equals_its_summary_file(name: str, text: str) -> None:
    assert text.strip() == (ROOT / name).read_text().strip()


@pytest.mark.parametrize("name", [name for name, _ in _blocks()])
def test_each_summary_is_rebuilt_from_its_run_files(name: str, tmp_path) -> None:
    folder = (ROOT / name).parent
    for p in folder.glob("*_s*.json"):
        if not p.name.startswith("m0"):
            shutil.copy(p, tmp_path / p.name)
    table.summarise(tmp_path)
    assert (tmp_path / "summary.md").read_text() == (folder / "summary.md").read_text()
