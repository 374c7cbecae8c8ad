"""Where the engine lives, the environment its processes get, and the contract shared with it.

lkm_core travels with the module: the installed extension packages it next to LKMSegment.py
(the scripted-module folder); in the source tree (additional module path <repo>/LKMSegment) it
is the repository root. That folder goes first on this process's ``sys.path`` (for
``lkm_core.contract``, standard library only) and on every engine child's PYTHONPATH, so both
sides read the same contract and the child runs the engine that came with the module.

The Slicer process imports ``lkm_core.contract`` and nothing else of lkm_core: no torch, no
numpy-heavy engine code; the engine itself always runs in a child process.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def engine_search_path() -> str | None:
    """The folder that holds the ``lkm_core`` package that came with this module, or None when
    neither layout has it (then only a pip-installed lkm_core can be used)."""
    here = Path(__file__).resolve().parent.parent  # the folder of LKMSegment.py
    for folder in (here, here.parent):
        if (folder / "lkm_core" / "__init__.py").is_file():
            return str(folder)
    return None


def engine_environment(tmpdir: str | None = None, extra: dict | None = None) -> dict:
    """Environment for every engine child (predict, bundle verify, device detection, the self
    test): lkm_core on PYTHONPATH, unbuffered output, optionally a private TMPDIR."""
    env = dict(os.environ)
    path = engine_search_path()
    if path:
        parts = [path] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != path]
        env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONUTF8", "1")  # the engine's JSON lines and messages are UTF-8
    if tmpdir:
        for key in ("TMPDIR", "TEMP", "TMP"):
            env[key] = tmpdir
    env.update(extra or {})
    return env


def engine_available() -> bool:
    return engine_search_path() is not None or importlib.util.find_spec("lkm_core") is not None


def _import_contract():
    path = engine_search_path()
    if path and path not in sys.path:
        sys.path.insert(0, path)  # the lkm_core that came with the module wins over any other
    from lkm_core import contract as module
    return module


contract = _import_contract()
