"""The procedure library: handler modules, pages and certificates beside the definition file.

`MODULE:CALLABLE` references load `procs/MODULE.py` (dots for subfolders) under a
private module name, so a procedure called `json` or `ssl` cannot shadow the real one.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from janustls.errors import JanusError

__all__ = ["ProcedureError", "REFERENCE", "load_object", "load_callable", "forget_modules"]

#: `MODULE:NAME`: a module of the procedure library (dots for subfolders) and a name in it (dots for attributes).
REFERENCE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$")

_PREFIX = "janustls_procs"


class ProcedureError(JanusError):
    """A `MODULE:CALLABLE` that cannot be loaded; the message says why."""


def _load_module(procs: Path, module: str) -> ModuleType:
    path = procs.joinpath(*module.split(".")).with_suffix(".py")
    name = f"{_PREFIX}.{abs(hash(str(procs.resolve())))}.{module}"
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise ProcedureError(f"{path} does not exist (procs = {procs})")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ProcedureError(f"{path} cannot be loaded as a Python module")
    mod = importlib.util.module_from_spec(spec)
    # Procedure modules may import their siblings by plain name.
    if str(procs) not in sys.path:
        sys.path.append(str(procs))
    sys.modules[name] = mod
    try:
        # From the source every time: a file changed within the second its cached
        # bytecode was written (same size) would otherwise run as it was.
        exec(compile(path.read_bytes(), str(path), "exec", dont_inherit=True), mod.__dict__)  # noqa: S102
    except Exception as e:
        del sys.modules[name]
        raise ProcedureError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    return mod


def forget_modules(procs: Path) -> list[str]:
    """Drop the loaded modules of a procedure library, so the next load reads the files again.

    A reload calls this first: a changed handler file (or a sibling module it imports by
    plain name) is used by the new definitions.  Connections already open keep the
    functions they started with.  Returns the names dropped.
    """
    root = procs.resolve()
    prefix = f"{_PREFIX}.{abs(hash(str(root)))}."
    dropped = []
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        inside = False
        if path:
            try:
                inside = Path(path).resolve().is_relative_to(root)
            except (OSError, ValueError):
                inside = False
        if name.startswith(prefix) or inside:
            del sys.modules[name]
            dropped.append(name)
    importlib.invalidate_caches()
    return dropped


def load_object(procs: Path, reference: str) -> Any:
    """What `MODULE:NAME` names in the procedure library (the one reader of that pattern)."""
    module, _, attr = reference.partition(":")
    target: Any = _load_module(procs, module)
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ProcedureError(f"{module} has no {attr!r}") from None
    return target


def load_callable(procs: Path, reference: Any) -> Any:
    """The callable named by `MODULE:CALLABLE` in the procedure library (a callable is itself)."""
    if callable(reference):
        return reference
    target = load_object(procs, reference)
    if not callable(target):
        raise ProcedureError(f"{reference} is not callable")
    return target
