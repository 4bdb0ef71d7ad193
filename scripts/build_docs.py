"""Build the API reference of every dualsparse module with pdoc; any warning is an error.

``dualsparse/__init__.py`` (and subpackages) define ``__all__``, which makes pdoc skip the
submodules it does not list, so the modules are enumerated here. Used by ``make docs``::

    python scripts/build_docs.py build/api
"""

from __future__ import annotations

import pkgutil
import sys
import warnings
from pathlib import Path

import pdoc.doc
import pdoc.render

import dualsparse


def modules() -> list[str]:
    """``dualsparse`` and all its submodules, sorted."""
    names = [m.name for m in pkgutil.walk_packages(dualsparse.__path__, "dualsparse.")]
    return ["dualsparse", *sorted(n for n in names if not n.rsplit(".", 1)[-1].startswith("_"))]


def main(argv: list[str]) -> None:
    """Write one page per module, the index and the search index (as ``pdoc.pdoc`` does)."""
    if len(argv) != 1:
        raise SystemExit("usage: build_docs.py OUTPUT_DIR")
    out = Path(argv[0])
    warnings.simplefilter("error")
    # Known exceptions, each a pdoc limitation rather than a docstring error: pdoc evaluates
    # the string annotations of a NamedTuple's generated __init__ outside its module, where a
    # field type defined in dualsparse is unknown (the fields are documented with the class).
    for known in (r"dualsparse\.models\.lm\.LMSequences\.__init__",):
        warnings.filterwarnings("ignore", message=rf"Error parsing type annotation .* {known}\.")
    pdoc.render.configure(docformat="google")
    docs = {name: pdoc.doc.Module.from_name(name) for name in modules()}
    for module in docs.values():
        page = out / f"{module.fullname.replace('.', '/')}.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(pdoc.render.html_module(module, docs))
    (out / "index.html").write_text(pdoc.render.html_index(docs))
    (out / "search.js").write_text(pdoc.render.search_index(docs))
    print(f"{len(docs)} modules documented in {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
