"""Logic of the LKMSegment module, importable without Qt (headless with slicer-core).

Only ``qtprocess`` needs the Slicer application; nothing here imports torch.
"""

from .engine import EngineJob, PredictOptions, engine_available, safe_case_name
from .logic import LKMSegmentCore, SegmentationFailed, SegmentationRun
from .models import ModelBundleError, ModelInfo, ModelRegistry, read_model_info
from .process import ProcessRunner, SubprocessRunner, python_executable

__all__ = [
    "EngineJob", "PredictOptions", "engine_available", "safe_case_name",
    "LKMSegmentCore", "SegmentationFailed", "SegmentationRun",
    "ModelBundleError", "ModelInfo", "ModelRegistry", "read_model_info",
    "ProcessRunner", "SubprocessRunner", "python_executable",
]
