"""Regenerate Testing/slicer_tests/pythonqt_api.json: the call forms PythonQt offers for the classes the module uses.

What Slicer's Python can call on a Qt object is the union of
1. the class's Qt meta-object (properties, which PythonQt exposes as attributes, public slots,
   signals, Q_INVOKABLE methods), read here from the real Qt 5.15 libraries of PyQt5 (Slicer 5.12
   is built on Qt 5.15) for Qt classes, and from the C++ headers for CTK and Slicer widgets;
2. PythonQt's generated wrappers (constructors ``new_X``, static methods ``static_X_name``, the
   remaining methods) and the code injected by hand through its typesystem files (for example
   ``QMenu.addAction(text, callable)``): read from PythonQt's sources.

Sources (the exact commits Slicer 5.12.3 builds): Slicer v5.12.3 pins CTK 5056664a, whose
CMakeExternals/PythonQt.cmake pins commontk/PythonQt "patched-v4.1.0-2026-06-05-9992368e9", that is
MeVisLab/pythonqt v4.1.0 (9992368e) with CTK's build patches. Its wrappers for Qt 5.15 are in
generated_cpp_515/; the injected code in generator/typesystem_*.xml.

Run with git checkouts (bare mirrors are fine) of the three repositories::

    python Testing/slicer_tests/pythonqt_api.py --pythonqt PATH/pythonqt --ctk PATH/CTK --slicer PATH/Slicer

The widget test (test_slicer_widget.py) enforces this table on the module's code; it never reads
the module to build it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

OUT = Path(__file__).resolve().parent / "pythonqt_api.json"

PYTHONQT = ("MeVisLab/pythonqt", "9992368e937cc6cfaf5b1fb274ddc7b72ec73d4c", "v4.1.0")
CTK = ("commontk/CTK", "5056664a20a3d0a393bb6d91f040525581e0dcdf", "pinned by Slicer v5.12.3")
SLICER = ("Slicer/Slicer", "v5.12.3", "v5.12.3")
WRAPPERS = "generated_cpp_515"

# Qt classes used by LKMSegment.py, qtprocess.py and the scripted-module base classes,
# with every base class up to QObject (the meta-object and the wrappers are per class).
QT_CLASSES = {
    "QtCore": ["QObject", "QTimer", "QThread", "QIODevice", "QProcess", "QProcessEnvironment",
               "QAbstractItemModel", "QAbstractProxyModel", "QSortFilterProxyModel"],
    "QtWidgets": ["QWidget", "QFrame", "QLabel", "QAbstractButton", "QPushButton", "QRadioButton",
                  "QCheckBox", "QComboBox", "QAbstractScrollArea", "QAbstractItemView", "QListView",
                  "QListWidget", "QListWidgetItem", "QProgressBar", "QPlainTextEdit", "QLineEdit",
                  "QMenu", "QAction", "QDialog", "QFileDialog", "QLayout", "QBoxLayout",
                  "QVBoxLayout", "QFormLayout", "QApplication"],
}
CUSTOM_CLASSES = {  # class: (repository, header path)
    "ctkCollapsibleButton": (CTK, "Libs/Widgets/ctkCollapsibleButton.h"),
    "ctkPathLineEdit": (CTK, "Libs/Widgets/ctkPathLineEdit.h"),
    "qMRMLWidget": (SLICER, "Libs/MRML/Widgets/qMRMLWidget.h"),
    "qMRMLNodeComboBox": (SLICER, "Libs/MRML/Widgets/qMRMLNodeComboBox.h"),
    # what qMRMLNodeComboBox.sortFilterProxyModel() returns (hiddenNodeIDs)
    "qMRMLSortFilterProxyModel": (SLICER, "Libs/MRML/Widgets/qMRMLSortFilterProxyModel.h"),
}


def git_show(git_dir: str, commit: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"],
                          capture_output=True, text=True, check=True).stdout


def git_grep_files(git_dir: str, commit: str, pattern: str, under: str) -> list[str]:
    out = subprocess.run(["git", "--git-dir", git_dir, "grep", "-l", "-E", pattern, commit, "--", under],
                         capture_output=True, text=True).stdout
    return [line.split(":", 1)[1] for line in out.splitlines() if ":" in line]


# -- C++ declarations ------------------------------------------------------------------------
def split_params(text: str) -> list[str]:
    """Split a parameter list at top-level commas (templates and calls nest)."""
    params, depth, current = [], 0, ""
    for ch in text:
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        if ch == "," and depth == 0:
            params.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        params.append(current.strip())
    return [p for p in params if p and p != "void"]


def param_type(param: str) -> str:
    """'const QString&  text = QString()' -> 'QString&'; keeps '*' and '&' (they tell a kind)."""
    param = param.split("=", 1)[0].strip()
    param = re.sub(r"\bconst\b", "", param).strip()
    m = re.match(r"(.*?)([A-Za-z_]\w*)?$", param)
    typ = (m.group(1) if m.group(2) and m.group(1).strip() else param).strip()
    typ = re.sub(r"PythonQtNewOwnerOfThis<\s*(.*?)\s*>", r"\1", typ)
    typ = re.sub(r"PythonQtPassOwnershipToCPP<\s*(.*?)\s*>", r"\1", typ)
    return re.sub(r"\s+", "", typ)


def overload(params: list[str]) -> dict:
    types = [param_type(p) for p in params]
    required = sum(1 for p in params if "=" not in p)
    return {"types": types, "required": required}


DECL = re.compile(r"^\s*(?:virtual\s+|static\s+|inline\s+)*(?:[\w:<>,\s\*&]+?)\s*[\*&\s]\s*(~?\w+)\s*\((.*)\)\s*(?:const)?\s*(?:override)?\s*(?:=\s*0)?\s*(?:\{.*|;)?\s*$")


def wrapper_members(source: str, cls: str) -> dict:
    """Constructors, static methods and methods of ``PythonQtWrapper_<cls>`` (generated and
    injected code: the generator copies the typesystem's pywrap-h code into the class)."""
    start = re.search(rf"^class PythonQtWrapper_{cls} : public QObject", source, re.M)
    if not start:
        raise LookupError(f"PythonQtWrapper_{cls} not found")
    body, depth, lines = source[start.end():], 0, []
    pending = ""
    for raw in body.splitlines():
        line = raw.split("//")[0]
        if depth == 1 and (pending or "(" in line):
            pending += " " + line.strip()
            if pending.count("(") <= pending.count(")"):
                lines.append(pending.strip())
                pending = ""
        depth += line.count("{") - line.count("}")
        if depth <= 0 and "}" in line:
            break
    members = {"constructors": [], "static": {}, "methods": {}, "enums": []}
    for decl in lines:
        head = decl.split("{")[0]
        m = re.match(r"^(.*?)\b(\w+)\s*\((.*)\)\s*(const)?\s*;?\s*$", head.strip())
        if not m:
            continue
        name, params = m.group(2), split_params(m.group(3))
        if name in ("Q_ENUMS", "Q_FLAGS", "Q_OBJECT") or name.startswith(("delete_", "py_q_", "__")):
            continue
        if name == f"new_{cls}":
            members["constructors"].append(overload(params))
        elif name.startswith(f"static_{cls}_"):
            members["static"].setdefault(name[len(f"static_{cls}_"):], []).append(overload(params))
        elif params and param_type(params[0]).rstrip("*").endswith(cls):
            members["methods"].setdefault(name, []).append(overload(params[1:]))
    members["enums"] = sorted(set(re.findall(r"^\s*enum\s+(\w+)\s*\{", body.split("\n};")[0], re.M)))
    return members


def injected_classes(typesystem: str) -> dict[str, list[str]]:
    """{class: [names of functions injected into its wrapper]} from a typesystem file."""
    root = ET.fromstring(typesystem)
    found = {}
    for element in root.iter():
        name = element.get("name")
        if not name:
            continue
        for inject in element.findall("inject-code"):
            if inject.get("class") == "pywrap-h":
                names = re.findall(r"^\s*[\w:<>\*& ]+?[\*&\s](\w+)\s*\(", inject.text or "", re.M)
                found.setdefault(name, []).extend(n for n in names if n not in ("if", "return"))
    return found


# -- the meta-object of Qt classes (from the real Qt libraries) -------------------------------
def qt_meta(cls_obj) -> dict:
    from PyQt5.QtCore import QMetaMethod

    meta = cls_obj.staticMetaObject
    out = {"properties": {}, "slots": {}, "signals": {}, "invokables": {}}
    for i in range(meta.propertyOffset(), meta.propertyCount()):
        p = meta.property(i)
        out["properties"][p.name()] = {"type": p.typeName(), "writable": p.isWritable()}
    for i in range(meta.methodOffset(), meta.methodCount()):
        m = meta.method(i)
        if m.access() != QMetaMethod.Public and m.methodType() != QMetaMethod.Signal:
            continue
        kind = {QMetaMethod.Slot: "slots", QMetaMethod.Signal: "signals",
                QMetaMethod.Method: "invokables"}.get(m.methodType())
        if kind is None:
            continue
        types = [bytes(t).decode() for t in m.parameterTypes()]
        out[kind].setdefault(bytes(m.name()).decode(), []).append({"types": types, "required": len(types)})
    return out


def qt_classes_meta() -> dict:
    import PyQt5.QtCore
    import PyQt5.QtWidgets

    modules = {"QtCore": PyQt5.QtCore, "QtWidgets": PyQt5.QtWidgets}
    result = {}
    for module_name, names in QT_CLASSES.items():
        for name in names:
            cls_obj = getattr(modules[module_name], name)
            meta = getattr(cls_obj, "staticMetaObject", None)
            entry = {"module": module_name, "qobject": meta is not None}
            if meta is not None:
                entry.update(qt_meta(cls_obj))
                entry["base"] = meta.superClass().className() if meta.superClass() else None
            else:
                bases = [b.__name__ for b in cls_obj.__bases__ if b.__name__.startswith("Q")]
                entry["base"] = bases[0] if bases else None
            result[name] = entry
    return result


# -- CTK / Slicer widgets (their headers: Q_PROPERTY, public slots, signals, Q_INVOKABLE) ------
def header_meta(text: str, cls: str) -> dict:
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    m = re.search(rf"class\s+\w*\s*{cls}\s*:\s*public\s+(\w+)", text)
    out = {"module": "custom", "qobject": True, "base": m.group(1) if m else "QWidget",
           "properties": {}, "slots": {}, "signals": {}, "invokables": {}}
    for typ, name, rest in re.findall(r"Q_PROPERTY\(\s*([\w:<>]+\*?)\s+(\w+)\s+(.*?)\)\s*\n", text):
        out["properties"][name] = {"type": typ, "writable": " WRITE " in f" {rest} "}
    section = None
    for line in text.splitlines():
        stripped = line.strip()
        if re.match(r"^(public|protected|private)?\s*(slots|Q_SLOTS)\s*:", stripped):
            section = "slots" if stripped.startswith("public") else None
            continue
        if re.match(r"^(signals|Q_SIGNALS)\s*:", stripped):
            section = "signals"
            continue
        if re.match(r"^(public|protected|private)\s*:", stripped):
            section = "public" if stripped.startswith("public") else None
            continue
        kind = section if section in ("slots", "signals") else None
        if section == "public" and "Q_INVOKABLE" in stripped:
            kind = "invokables"
        if kind is None:
            continue
        d = re.match(r"^(?:Q_INVOKABLE\s+)?(?:virtual\s+)?[\w:<>\*&\s]+?[\*&\s](\w+)\s*\((.*)\)\s*(const)?\s*(override)?\s*;", stripped)
        if d and d.group(1) != cls:
            params = split_params(d.group(2))
            out[kind].setdefault(d.group(1), []).append(overload(params))
    return out


def build(pythonqt_git: str, ctk_git: str, slicer_git: str) -> dict:
    qt = qt_classes_meta()
    injected = {}
    for ts in ("typesystem_core.xml", "typesystem_gui.xml"):
        for cls, names in injected_classes(git_show(pythonqt_git, PYTHONQT[1], f"generator/{ts}")).items():
            injected.setdefault(cls, sorted(set(names)))
    wrapper_files = {}
    for name in qt:
        files = git_grep_files(pythonqt_git, PYTHONQT[1], rf"^class PythonQtWrapper_{name} : public QObject",
                               WRAPPERS)
        if not files:
            raise SystemExit(f"no PythonQt wrapper for {name}")
        source = git_show(pythonqt_git, PYTHONQT[1], files[0])
        qt[name]["wrapper"] = wrapper_members(source, name)
        qt[name]["wrapper_file"] = files[0]
        wrapper_files[name] = files[0]
        for fn in injected.get(name, []):  # injected code must have reached the wrapper
            if fn not in qt[name]["wrapper"]["methods"] and fn not in qt[name]["wrapper"]["static"]:
                raise SystemExit(f"{name}.{fn} is injected in the typesystem but not in {files[0]}")
        qt[name]["injected"] = injected.get(name, [])
    custom = {}
    for name, ((repo, commit, _), path) in CUSTOM_CLASSES.items():
        git_dir = ctk_git if repo == CTK[0] else slicer_git
        header = git_show(git_dir, commit, path)
        custom[name] = header_meta(header, name)
        custom[name]["header"] = f"{repo}@{commit}:{path}"
        # constructed with a parent: a widget's is a QWidget, a model's (the proxy) a QObject
        parent = re.search(rf"\b{name}\s*\(\s*(QWidget|QObject)\s*\*", header)
        custom[name]["wrapper"] = {"constructors": [{"types": [f"{parent.group(1) if parent else 'QWidget'}*"],
                                                     "required": 0}],
                                   "static": {}, "methods": {}, "enums": []}
    from PyQt5.QtCore import QT_VERSION_STR

    return {
        "about": "Call forms PythonQt offers in Slicer 5.12 for the classes LKMSegment uses; "
                 "made by Testing/slicer_tests/pythonqt_api.py, do not edit by hand.",
        "sources": {
            "pythonqt": {"repository": PYTHONQT[0], "commit": PYTHONQT[1], "version": PYTHONQT[2],
                         "as_built_by_slicer": "commontk/PythonQt patched-v4.1.0-2026-06-05-9992368e9",
                         "wrappers": WRAPPERS, "typesystems": ["generator/typesystem_core.xml",
                                                               "generator/typesystem_gui.xml"]},
            "ctk": {"repository": CTK[0], "commit": CTK[1]},
            "slicer": {"repository": SLICER[0], "commit": SLICER[1]},
            "qt_meta_objects": f"Qt {QT_VERSION_STR} (PyQt5's Qt libraries)",
        },
        "classes": {**qt, **custom},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythonqt", required=True, help="git dir of MeVisLab/pythonqt")
    parser.add_argument("--ctk", required=True, help="git dir of commontk/CTK")
    parser.add_argument("--slicer", required=True, help="git dir of Slicer/Slicer")
    parser.add_argument("-o", "--output", default=str(OUT))
    args = parser.parse_args(argv)
    table = build(args.pythonqt, args.ctk, args.slicer)
    Path(args.output).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: {len(table['classes'])} classes")


if __name__ == "__main__":
    sys.exit(main())
