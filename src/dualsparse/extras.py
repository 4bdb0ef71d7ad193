"""Optional dependencies (the ``core`` layer): import one or say which extra installs it.

The extras are declared in ``pyproject.toml`` (``pip install 'dualsparse[plots]'`` etc.)::

    yaml = require("yaml", extra="sweeps", purpose="reading a YAML sweep spec")
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``dualsparse[extra]``.

    Only the absence of ``module`` itself (its top-level package) is translated; an
    ImportError raised inside an installed package propagates unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingExtraError(
            f"{purpose} needs the optional package {module.split('.')[0]!r}: "
            f"pip install 'dualsparse[{extra}]'") from exc
