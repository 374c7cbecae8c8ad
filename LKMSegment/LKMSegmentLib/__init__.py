"""Logic of the LKMSegment module, importable without Qt (headless with slicer-core).

Only ``qtprocess`` needs the Slicer application; nothing here imports torch. The names below
are loaded on first use, so that the engine-side parts (``engine``, ``process``, ``protocol``,
``models``, ``dependencies``) import without MRML as well: the replica of Slicer's Python used in
the tests drives EngineJob that way.
"""

import importlib

_EXPORTS = {
    "EngineJob": "engine", "PredictOptions": "engine", "engine_available": "enginecontract",
    "safe_case_name": "engine",
    "LKMSegmentCore": "logic", "SegmentationFailed": "logic", "SegmentationRun": "logic",
    "ModelBundleError": "models", "ModelInfo": "models", "ModelRegistry": "models",
    "read_model_info": "models",
    "ProcessRunner": "process", "SubprocessRunner": "process", "python_executable": "process",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
