"""Static checks of the Slicer extension: UI file, packaging lists, metadata, import hygiene.

The panel itself (LKMSegment.py's widget with its .ui, the parameter node binding, enabling of
Segment/Stop/Export, the model list, "Add model…", structures, progress, Stop, export) is driven
headless in test_slicer_widget.py, on a stand-in for Slicer's GUI layer that enforces PythonQt's
call forms (test_slicer_standin_rules.py, table in pythonqt_api.json). What only the in-app self
test (LKMSegmentTest in LKMSegment/LKMSegment.py, run with Slicer's `ctest` or Reload and Test)
covers:

- Slicer's real PythonQt, CTK and qMRML widgets and its parameterNodeWrapper;
- the QProcess runner inside the application, through the PythonSlicer launcher;
- installing dependencies through Slicer's own pip helpers and the real PyTorch extension and
  light-the-torch (test_slicer_replica.py runs the module's install, the extension route
  included, in a replica of Slicer's Python with stand-ins for those);
- `slicer.util.loadVolume` of the sample CT, the subject hierarchy plugins of the app.

Everything below the panel (engine process, protocol, Stop, import into segmentation nodes,
batch, export, dependency plan, model validation) is tested headless on real MRML in
test_slicer_segment.py, test_slicer_export.py, test_slicer_export_pairing.py,
test_slicer_memory.py, test_slicer_panel.py and test_slicer_logic_units.py.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import SimpleITK as sitk
from slicer_fixtures import cmake_lists

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "LKMSegment"
UI_FILE = MODULE / "Resources" / "UI" / "LKMSegment.ui"
NOT_PACKAGED = {"CMakeLists.txt", "README-module.md"}


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def widget_lookups() -> set[str]:
    """Every `self.ui.<name>` in LKMSegment.py."""
    tree = ast.parse((MODULE / "LKMSegment.py").read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def parameter_fields() -> set[str]:
    tree = ast.parse((MODULE / "LKMSegment.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "LKMSegmentParameterNode":
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("LKMSegmentParameterNode not found")


def test_ui_file_parses_and_has_every_widget_the_code_looks_up():
    widgets = ui_widgets()
    assert ET.parse(UI_FILE).getroot().tag == "ui"
    missing = sorted(widget_lookups() - set(widgets))
    assert not missing, f"LKMSegment.py uses widgets that the .ui lacks: {missing}"
    for needed in ("inputVolumeSelector", "modelSelector", "addModelButton", "structuresList",
                   "deviceComboBox", "quickCheckBox", "ttaCheckBox", "outputSegmentationSelector",
                   "segmentButton", "stopButton", "progressBar", "logTextEdit", "show3DCheckBox",
                   "batchVolumesList", "batchSegmentButton", "datasetPathLineEdit", "exportButton",
                   # review triage: confidence per segment, the map overlay, rankings
                   "confidenceMapCheckBox", "confidenceList", "showConfidenceMapButton",
                   "batchRankingList", "exportCasesList"):
        assert needed in widgets, needed


def test_ui_parameter_names_match_the_parameter_node():
    names = set()
    for widget in ui_widgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names.add(prop.find("string").text)
    fields = parameter_fields()
    assert names, "no SlicerParameterName in the .ui"
    assert names <= fields, f"SlicerParameterName without a parameter: {sorted(names - fields)}"
    assert {"inputVolume", "outputSegmentation", "device", "quick", "tta", "show3D", "confidenceMap"} <= names


def _files_under(folder: Path) -> set[str]:
    """Files that ship from ``folder``: those git tracks (a colleague's uncommitted work in
    progress is not part of the product yet), or every file when this is not a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", str(folder)], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
        paths = [REPO / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = list(folder.rglob("*"))
    found = set()
    for path in paths:
        if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        found.add(path.relative_to(folder).as_posix())
    return found


def test_every_module_file_is_listed_for_packaging_in_cmake():
    lists = cmake_lists(MODULE / "CMakeLists.txt")
    listed = set(lists["MODULE_PYTHON_SCRIPTS"]) | set(lists["MODULE_PYTHON_RESOURCES"])
    present = _files_under(MODULE) - NOT_PACKAGED
    assert not present - listed, f"add to LKMSegment/CMakeLists.txt: {sorted(present - listed)}"
    assert not listed - present, f"listed but missing: {sorted(listed - present)}"


def test_every_engine_file_is_listed_for_packaging_in_cmake():
    lists = cmake_lists(MODULE / "CMakeLists.txt")
    listed = set(lists["LKM_CORE_PYTHON_SCRIPTS"]) | set(lists.get("LKM_CORE_RESOURCES", []))
    present = {f"lkm_core/{p}" for p in _files_under(REPO / "lkm_core")}
    assert not present - listed, (
        "add to LKM_CORE_PYTHON_SCRIPTS/LKM_CORE_RESOURCES in LKMSegment/CMakeLists.txt: "
        f"{sorted(present - listed)}")
    assert not listed - present, f"listed but missing: {sorted(listed - present)}"
    cmake = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in cmake and "slicer_add_python_unittest" in cmake


def test_extension_metadata_icon_and_catalog_entry():
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', top), key
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in top
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top
    assert "add_subdirectory(LKMSegment)" in top
    entry = json.loads((REPO / "LKMSegment.json").read_text(encoding="utf-8"))
    assert entry["category"] == "Segmentation" and entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"] and entry["$schema"].endswith("schema-v1.0.2.json#")
    for icon in (REPO / "Resources" / "Icons" / "LKMSegment.png", MODULE / "Resources" / "Icons" / "LKMSegment.png"):
        assert sitk.ReadImage(str(icon)).GetSize() == (128, 128)


def test_module_file_is_thin_and_has_the_scripted_module_classes():
    tree = ast.parse((MODULE / "LKMSegment.py").read_text(encoding="utf-8"))
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"LKMSegment", "LKMSegmentWidget", "LKMSegmentLogic", "LKMSegmentTest"} <= classes
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "lkm_core"}, "the Slicer process must not import the engine"


def test_logic_imports_neither_torch_nor_qt_and_of_the_engine_only_its_contract():
    # no PYTHONPATH, run from elsewhere: the module must find the lkm_core it came with by itself
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import LKMSegmentLib, LKMSegmentLib.logic, LKMSegmentLib.datasetexport, LKMSegmentLib.scene\n"
        "import LKMSegmentLib.dependencies, LKMSegmentLib.models, LKMSegmentLib.engine\n"
        "import lkm_core\n"
        "engine = sorted(m for m in sys.modules if m.split('.')[0] == 'lkm_core')\n"
        "bad = [m for m in ('torch', 'qt', 'PythonQt') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert 'lkm_core.contract' in engine, engine\n"
        "assert set(engine) <= {'lkm_core', 'lkm_core.contract', 'lkm_core.terminology'}, engine\n"
        "print(lkm_core.__file__)\n") % str(MODULE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=str(MODULE.parent.parent))
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == REPO / "lkm_core"
