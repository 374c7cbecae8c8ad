"""A stand-in for the 3D Slicer application's GUI layer, for driving LKMSegment.py headless.

THIS IS NOT SLICER. The Slicer application (its Qt main window, PythonQt, CTK and the qMRML
widgets) cannot run here; this module stands in for it so that the module's own widget code
(LKMSegment/LKMSegment.py) runs on real MRML (slicer-core) with real Qt widgets (PyQt5, offscreen).

What makes it a fair stand-in rather than one that agrees with the code:

- Every Qt object the module touches is reached through :class:`Wrapped`, which enforces
  PythonQt's rules from Testing/slicer_tests/pythonqt_api.json, a table extracted from PythonQt's own wrapper
  sources, Qt's meta-objects and the CTK/Slicer headers by Testing/slicer_tests/pythonqt_api.py (never from the
  module): properties are attributes (``label.text = "x"``; ``label.text()`` fails, since the
  attribute is a string), signals only ``connect(callable)``/``disconnect``/``emit``, keyword
  arguments are refused, a method exists only in the forms (argument count and kinds) PythonQt
  offers, unknown attributes can be neither read nor set. Property lookup comes before methods,
  as in PythonQt's PythonQtClassInfo::member.
- Signal handlers get only as many arguments as a plain Python function accepts (PythonQt's
  PythonQtSignalTarget::call); an exception in a handler is recorded (PythonQt prints it and goes
  on), and the test fails on any recorded error.
- ``qMRMLNodeComboBox`` behaves like Slicer's: with ``noneEnabled`` false it selects the first
  node of its types as soon as there is one (what made a silent default possible); its
  ``sortFilterProxyModel().hiddenNodeIDs`` keeps nodes out of the list, and when the current node
  leaves the list (removed or hidden) the row that takes its place becomes current, as Qt's
  QComboBox does when its model removes the current row.
- ``slicer.util`` dialogs answer from a queue the test fills, and record what was shown.
"""

from __future__ import annotations

import json
import os
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

from PyQt5 import QtCore, QtWidgets, uic

TABLE = json.loads((Path(__file__).resolve().parent / "pythonqt_api.json").read_text(encoding="utf-8"))
CLASSES = TABLE["classes"]


class PythonQtViolation(Exception):
    """A use that Slicer's PythonQt would refuse (the message says which rule)."""


# Which overload of an overloaded signal ``connect`` binds; PythonQt picks one of the chain, so
# a test can run code both ways (for example QProcess.finished(int) / finished(int, ExitStatus)).
SIGNAL_OVERLOAD = "first"
violations: list[str] = []   # every refusal, even when the module catches the exception
handler_errors: list[str] = []  # exceptions raised inside signal handlers


def _refuse(kind, message):
    violations.append(message)
    return kind(message)


# -- the table ----------------------------------------------------------------------------------
def _chain(cls: str):
    while cls:
        yield cls
        cls = CLASSES[cls].get("base") if cls in CLASSES else None


def lookup(cls: str, name: str):
    """(kind, data) of ``name`` on class ``cls`` as PythonQt resolves it, or (None, None)."""
    for c in _chain(cls):
        if name in CLASSES[c].get("properties", {}):
            return "property", CLASSES[c]["properties"][name]
    overloads, signal = [], None
    for c in _chain(cls):
        entry = CLASSES[c]
        if name in entry.get("signals", {}) and signal is None:
            signal = entry["signals"][name]
        for kind in ("slots", "invokables"):
            overloads += entry.get(kind, {}).get(name, [])
        overloads += entry.get("wrapper", {}).get("methods", {}).get(name, [])
    if signal is not None and not overloads:
        return "signal", signal
    if overloads:
        return "method", overloads
    return None, None


def statics(cls: str, name: str):
    for c in _chain(cls):
        found = CLASSES[c].get("wrapper", {}).get("static", {}).get(name)
        if found:
            return found
    return None


# -- argument kinds -------------------------------------------------------------------------------
_INTS = {"int", "uint", "qint64", "quint64", "qlonglong", "long", "short", "ulong", "unsignedint",
         "Qt::HANDLE", "WId", "qintptr"}


def _accepts(cpp: str, value) -> bool:
    t = cpp.rstrip("&")
    if t in ("QVariant", "PyObject*", "QVariantMap", "QVariantList"):
        return True
    if t == "QString":
        return isinstance(value, str)
    if t in ("char*", "QByteArray"):
        return isinstance(value, (str, bytes))
    if t == "QStringList":
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if t.startswith(("QList<", "QVector<")):
        return isinstance(value, (list, tuple))
    if t in ("double", "float", "qreal"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "bool":
        return isinstance(value, (bool, int))
    if t in _INTS or "::" in t or t.endswith(("Flags", "Options", "Alignment", "Orientations")):
        return _is_intlike(value)
    if t.endswith("*"):
        if value is None:
            return True
        target = t[:-1]
        raw = unwrap(value)
        if isinstance(raw, (QtCore.QObject,)) or _is_sip(raw):
            qt_class = getattr(QtWidgets, target, None) or getattr(QtCore, target, None)
            return qt_class is None or isinstance(raw, qt_class) or _meta_inherits(raw, target)
        return not isinstance(value, (str, int, float)) and target.startswith("vtk")
    qt_class = getattr(QtWidgets, t, None) or getattr(QtCore, t, None)
    from PyQt5 import QtGui
    qt_class = qt_class or getattr(QtGui, t, None)
    return isinstance(unwrap(value), qt_class) if qt_class else not isinstance(value, (str, int, float))


def _is_sip(value) -> bool:
    return type(value).__module__.startswith("PyQt5")


def _is_intlike(value) -> bool:
    if isinstance(value, int):
        return True
    return _is_sip(value) and hasattr(value, "__int__")


def _meta_inherits(obj, name) -> bool:
    meta = obj.metaObject() if isinstance(obj, QtCore.QObject) else None
    while meta is not None:
        if meta.className() == name:
            return True
        meta = meta.superClass()
    return False


def _matches(overloads, args) -> bool:
    for form in overloads:
        if form["required"] <= len(args) <= len(form["types"]) and all(
                _accepts(t, a) for t, a in zip(form["types"], args)):
            return True
    return False


def _forms(overloads) -> str:
    return "; ".join("(" + ", ".join(f["types"]) + ")" for f in overloads) or "none"


# -- wrapping -----------------------------------------------------------------------------------
_wrappers: dict[int, "Wrapped"] = {}


def table_class(obj) -> str | None:
    if isinstance(obj, QtCore.QObject):
        meta = obj.metaObject()
        while meta is not None:
            if meta.className() in CLASSES:
                return meta.className()
            meta = meta.superClass()
        return None
    for klass in type(obj).__mro__:
        if klass.__name__ in CLASSES:
            return klass.__name__
    return None


def wrap(value):
    if isinstance(value, Wrapped) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(wrap(v) for v in value)
    if not _is_sip(value) and not isinstance(value, QtCore.QObject):
        return value
    cls = table_class(value)
    if cls is None:
        return value  # a value type (QByteArray, QSize...): PythonQt converts or wraps it as is
    key = id(value)
    known = _wrappers.get(key)
    if known is not None and object.__getattribute__(known, "_obj") is value:
        return known  # PythonQt keeps one wrapper per C++ object
    w = Wrapped(value, cls)
    _wrappers[key] = w
    return w


def unwrap(value):
    if isinstance(value, Wrapped):
        return object.__getattribute__(value, "_obj")
    if isinstance(value, (list, tuple)):
        return type(value)(unwrap(v) for v in value)
    return value


def _handler(callable_, arity=None):
    """Call a Python handler the way PythonQt's signal target does (``arity``: the arguments of
    the signal overload it is connected to)."""
    code = getattr(getattr(callable_, "__func__", callable_), "__code__", None)
    count = None
    if code is not None and not code.co_flags & 0x04:  # no *args
        count = code.co_argcount - (1 if hasattr(callable_, "__self__") else 0)

    def call(*args):
        args = [wrap(a) for a in args][:arity]
        if count is not None:
            args = args[:count]
        try:
            callable_(*args)
        except Exception as e:  # PythonQt prints the traceback and carries on
            import traceback
            handler_errors.append("".join(traceback.format_exception(e)))
    return call


class Signal:
    def __init__(self, owner, name, bound, arity=None):
        self._owner, self._name, self._bound, self._arity = owner, name, bound, arity
        self._handlers = {}

    def connect(self, *args, **kwargs):
        if kwargs or len(args) != 1 or not callable(args[0]):
            raise _refuse(TypeError, f"{self._owner}.{self._name}.connect takes one callable "
                          "(PythonQt: 'Called connect with wrong number of arguments')")
        handler = _handler(args[0], self._arity)
        self._handlers.setdefault(id(args[0]), []).append(handler)
        self._bound.connect(handler)
        return True

    def disconnect(self, *args):
        if not args:
            self._bound.disconnect()
            return True
        for handler in self._handlers.pop(id(args[0]), []):
            self._bound.disconnect(handler)
        return True

    def emit(self, *args):
        self._bound.emit(*unwrap(list(args)))


def _pyqt_type(cpp: str):
    simple = {"int": int, "bool": bool, "QString": str, "double": float, "qlonglong": int}
    if cpp in simple:
        return simple[cpp]
    if "::" in cpp:
        scope, member = cpp.split("::", 1)
        holder = getattr(QtCore, scope, None) or getattr(QtWidgets, scope, None)
        if holder is not None and hasattr(holder, member):
            return getattr(holder, member)
    return object


def _bound_signal(obj, name, overloads):
    """(PyQt bound signal, number of arguments a handler gets) for the chosen overload.

    PyQt5 lacks some overloads Qt still declares (QProcess.finished(int)); such a one is
    delivered from the longer overload it prefixes, with the extra arguments dropped."""
    bound = getattr(obj, name)
    if len(overloads) < 2:
        return bound, None
    form = overloads[0] if SIGNAL_OVERLOAD == "first" else overloads[-1]
    for candidate in sorted(overloads, key=lambda f: len(f["types"])):
        if candidate["types"][:len(form["types"])] != form["types"]:
            continue
        types = tuple(_pyqt_type(t) for t in candidate["types"])
        try:
            chosen = bound[types[0]] if len(types) == 1 else bound[types]
        except KeyError:
            continue
        return chosen, len(form["types"])
    raise AssertionError(f"no PyQt overload of {name} delivers {form['types']}")


class Method:
    def __init__(self, owner, name, overloads, target):
        self._owner, self._name, self._overloads, self._target = owner, name, overloads, target

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise _refuse(TypeError, f"{self._owner}.{self._name}: PythonQt refuses keyword arguments "
                          f"({', '.join(kwargs)})")
        if not _matches(self._overloads, args):
            raise _refuse(TypeError, f"{self._owner}.{self._name}{tuple(args)!r}: no such call in "
                          f"PythonQt; its forms are {_forms(self._overloads)}")
        return wrap(self._target(*unwrap(list(args))))


class Wrapped:
    """A Qt object as Slicer's Python sees it (see the module docstring)."""

    def __init__(self, obj, cls):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_cls", cls)

    def __repr__(self):
        return f"<{object.__getattribute__(self, '_cls')} (PythonQt rules)>"

    def __eq__(self, other):
        return unwrap(self) is unwrap(other)

    def __hash__(self):
        return id(unwrap(self))

    def __getattr__(self, name):
        obj, cls = object.__getattribute__(self, "_obj"), object.__getattribute__(self, "_cls")
        if name.startswith("__"):
            raise AttributeError(name)
        kind, data = lookup(cls, name)
        if kind == "property":
            if isinstance(obj, QtCore.QObject) and obj.metaObject().indexOfProperty(name) < 0:
                raise NotImplementedError(f"the stand-in's {cls} lacks the property '{name}' Slicer has")
            value = obj.property(name)
            # PythonQtConv::QStringListToPyObject: a QStringList comes to Python as a tuple
            return tuple(value) if data["type"] == "QStringList" else wrap(value)
        if kind == "signal":
            return Signal(cls, name, *_bound_signal(obj, name, data))
        if kind == "method":
            return Method(cls, name, data, getattr(obj, name))
        enum = _enum_value(obj, name)
        if enum is not None:
            return enum
        raise _refuse(AttributeError, f"{cls} has no attribute '{name}' in PythonQt")

    def __setattr__(self, name, value):
        obj, cls = object.__getattribute__(self, "_obj"), object.__getattribute__(self, "_cls")
        kind, data = lookup(cls, name)
        if kind != "property":
            raise _refuse(AttributeError, f"'{name}' of {cls} can not be set in PythonQt ({kind or 'no such property'})")
        if not data["writable"]:
            raise _refuse(AttributeError, f"Property '{name}' of {cls} is not writable")
        if not obj.setProperty(name, unwrap(value)):
            raise _refuse(AttributeError, f"Property '{name}' of type '{data['type']}' does not accept {value!r}")

    def __bool__(self):
        return True


def _enum_value(obj_or_class, name):
    value = getattr(obj_or_class, name, None)
    if value is not None and _is_intlike(value) and name[:1].isupper():
        return value
    return None


class QtClass:
    """``qt.QSomething``: construction in PythonQt's forms, static methods, enum values."""

    def __init__(self, name, pyqt_class, statics_hook=None):
        self._name, self._class, self._statics_hook = name, pyqt_class, statics_hook

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise _refuse(TypeError, f"{self._name}(): PythonQt refuses keyword arguments")
        forms = CLASSES[self._name]["wrapper"]["constructors"]
        if not _matches(forms, args):
            raise _refuse(TypeError, f"{self._name}{tuple(args)!r}: no such constructor in PythonQt; "
                          f"its forms are {_forms(forms)}")
        return wrap(self._class(*unwrap(list(args))))

    def __getattr__(self, name):
        forms = statics(self._name, name)
        if forms is not None:
            target = (self._statics_hook or {}).get(name) or getattr(self._class, name)
            return Method(self._name, name, forms, target)
        enum = _enum_value(self._class, name)
        if enum is not None:
            return enum
        raise _refuse(AttributeError, f"qt.{self._name} has no attribute '{name}' in PythonQt")


class QtNamespace:
    """``qt.Qt``: enum values only."""

    def __getattr__(self, name):
        enum = _enum_value(QtCore.Qt, name)
        if enum is None:
            raise _refuse(AttributeError, f"qt.Qt has no enum value '{name}'")
        return enum


# -- ctk / qMRML widgets (real Qt widgets standing in for the C++ ones) -------------------------
class qMRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = QtCore.pyqtSignal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    @QtCore.pyqtSlot(object)
    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLSortFilterProxyModel(QtCore.QSortFilterProxyModel):
    """What ``qMRMLNodeComboBox.sortFilterProxyModel()`` returns; of its filters only
    ``hiddenNodeIDs`` (the combo box's own properties stand for the others)."""

    def __init__(self, combo):
        super().__init__(combo)
        self._combo, self._hidden = combo, []

    def _get_hidden(self):
        return list(self._hidden)

    def setHiddenNodeIDs(self, ids):
        ids = [str(i) for i in ids]
        if ids == self._hidden:  # qMRMLSortFilterProxyModel::setHiddenNodeIDs: no change, no refilter
            return
        self._hidden = ids
        self._combo._refresh()  # invalidateFilter(): the rows of hidden nodes are removed

    hiddenNodeIDs = QtCore.pyqtProperty("QStringList", _get_hidden, setHiddenNodeIDs)


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """Lists the scene's nodes of ``nodeTypes`` not hidden by its proxy model; with
    ``noneEnabled`` false it selects the first node as soon as there is one, like Slicer's."""

    currentNodeChanged = QtCore.pyqtSignal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene, self._types, self._none, self._none_display = None, [], False, "None"
        self._observers, self._child_types = [], True
        self._current = None
        self._listed = []  # the nodes the list showed at its last refresh
        self._proxy = qMRMLSortFilterProxyModel(self)
        self.activated.connect(self._user_picked)
        self.setSizeAdjustPolicy(QtWidgets.QComboBox.AdjustToMinimumContentsLengthWithIcon)

    def sortFilterProxyModel(self):
        return self._proxy

    def _get_types(self):
        return list(self._types)

    def setNodeTypes(self, types_):
        self._types = list(types_)
        self._refresh()

    nodeTypes = QtCore.pyqtProperty("QStringList", _get_types, setNodeTypes)

    def _get_none(self):
        return self._none

    def setNoneEnabled(self, value):
        self._none = bool(value)
        self._refresh()

    noneEnabled = QtCore.pyqtProperty(bool, _get_none, setNoneEnabled)

    def _get_none_display(self):
        return self._none_display

    def setNoneDisplay(self, text):
        self._none_display = text
        self._refresh()

    noneDisplay = QtCore.pyqtProperty(str, _get_none_display, setNoneDisplay)

    def setShowChildNodeTypes(self, value):
        self._child_types = bool(value)

    showChildNodeTypes = QtCore.pyqtProperty(bool, lambda self: self._child_types, setShowChildNodeTypes)

    def setAddEnabled(self, value):
        pass

    def setRemoveEnabled(self, value):
        pass

    @QtCore.pyqtSlot(object)
    def setMRMLScene(self, scene):
        import vtk

        for tag in self._observers:
            self._scene.RemoveObserver(tag)
        self._scene, self._observers = scene, []
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent):
                self._observers.append(scene.AddObserver(event, lambda *a: self._refresh()))
            self._observers.append(scene.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda *a: self._refresh()))
        self._refresh()

    def nodes(self):
        if self._scene is None:
            return []
        found = []
        for i in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(i)
            for t in self._types:
                if node.IsA(t) and (self._child_types or node.GetClassName() == t) and not node.GetHideFromEditors():
                    found.append(node)
                    break
        hidden = self._proxy._hidden
        return [node for node in found if node.GetID() not in hidden]

    def nodeCount(self):
        return len(self.nodes())

    def nodeFromIndex(self, index):
        nodes = self.nodes()
        return nodes[index] if 0 <= index < len(nodes) else None

    def _refresh(self):
        nodes, offset = self.nodes(), (1 if self._none else 0)
        changed = False
        if self._current is not None and self._current not in nodes:
            # the current row went away (node removed or filtered out): QComboBox (Qt 5.15,
            # _q_rowsRemoved) makes the row now in its place current, or the last row; the
            # 'None' item is row 0 when enabled. qMRMLNodeComboBox then reports that node.
            old_row = offset + (self._listed.index(self._current) if self._current in self._listed else 0)
            row = min(len(nodes) + offset - 1, old_row)
            self._current = nodes[row - offset] if row >= offset else None
            changed = True
        elif self._current is None and not self._none and nodes and not self._listed:
            self._current = nodes[0]  # rows into an empty combo box: Qt makes the first current
            changed = True
        self._listed = nodes
        self.blockSignals(True)
        self.clear()
        if self._none:
            self.addItem(self._none_display)
        for node in nodes:
            self.addItem(node.GetName())
        # no current node: the 'None' item, or no item at all (index -1) without it
        self.setCurrentIndex(nodes.index(self._current) + offset if self._current is not None else offset - 1)
        self.blockSignals(False)
        if changed:
            self.currentNodeChanged.emit(self._current)

    def _user_picked(self, index):
        nodes = self.nodes()
        position = index - (1 if self._none else 0)
        self.setCurrentNode(nodes[position] if 0 <= position < len(nodes) else None)

    def currentNode(self):
        return self._current

    @QtCore.pyqtSlot(object)
    def setCurrentNode(self, node):
        if node is not None and node not in self.nodes():
            # a node the list does not show (another type, hidden): Slicer finds no row for it
            # and selects nothing ('None', or no item at all) - setCurrentNodeIDInternal
            node = None
        if node is self._current:
            return
        self._current = node
        self._refresh()
        self.currentNodeChanged.emit(node)


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed, self._text = False, ""

    def setText(self, text):
        self._text = text
        self._title()

    def text(self):
        return self._text

    def _title(self):
        self.setTitle(("▸ " if self._collapsed else "▾ ") + self._text)

    def _get_collapsed(self):
        return self._collapsed

    def setCollapsed(self, value):
        self._collapsed = bool(value)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)
        # a collapsed ctkCollapsibleButton shows only its title
        self.setStyleSheet("QGroupBox { border: none; margin-top: 1.1em; } "
                           "QGroupBox::title { subcontrol-origin: margin; left: 1px; }"
                           if self._collapsed else "")
        layout = self.layout()
        if layout is not None:
            layout.setContentsMargins(*((0, 0, 0, 0) if self._collapsed else (9, 9, 9, 9)))
        self._title()

    collapsed = QtCore.pyqtProperty(bool, _get_collapsed, setCollapsed)


class ctkPathLineEdit(QtWidgets.QWidget):
    Dirs, Files, Drives, NoDot, NoDotDot, Readable, Writable, Executable = 1, 2, 4, 8, 16, 32, 64, 128
    currentPathChanged = QtCore.pyqtSignal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._edit = QtWidgets.QLineEdit()
        layout.addWidget(self._edit)
        layout.addWidget(QtWidgets.QToolButton(text="…"))
        self._edit.textChanged.connect(self.currentPathChanged)
        self._filters = 0

    def currentPath(self):
        return self._edit.text()

    @QtCore.pyqtSlot(str)
    def setCurrentPath(self, path):
        self._edit.setText(path)

    path = QtCore.pyqtProperty(str, currentPath, setCurrentPath)

    def setFilters(self, value):
        self._filters = int(value)


CUSTOM_WIDGETS = [qMRMLWidget, qMRMLNodeComboBox, ctkCollapsibleButton, ctkPathLineEdit]


def load_ui(path):
    """Load a .ui with real Qt widgets, the ctk/qMRML classes as the stand-ins above; the
    <connections> are made by name, as Qt's loader does in Slicer."""
    for cls in CUSTOM_WIDGETS:  # uic imports a custom widget from the module its header names
        module = types.ModuleType(cls.__name__)
        setattr(module, cls.__name__, cls)
        sys.modules.setdefault(cls.__name__, module)
    tree = ET.parse(path)
    root = tree.getroot()
    connections = root.find("connections")
    wiring = []
    if connections is not None:
        for c in connections:
            wiring.append((c.findtext("sender"), c.findtext("signal").split("(")[0],
                           c.findtext("receiver"), c.findtext("slot").split("(")[0]))
        root.remove(connections)
    import io
    data = io.BytesIO()
    tree.write(data, encoding="utf-8")
    data.seek(0)
    widget = uic.loadUi(data)
    top = root.find("widget").get("name")

    def find(name):
        return widget if name == top else widget.findChild(QtCore.QObject, name)
    for sender, signal, receiver, slot in wiring:
        getattr(find(sender), signal).connect(getattr(find(receiver), slot))
    for button in widget.findChildren(ctkCollapsibleButton):
        button.setCollapsed(button.collapsed)  # uic sets properties before it adds the children
    return widget


def child_widget_variables(widget):
    names = {}
    for child in unwrap(widget).findChildren(QtCore.QObject):
        if child.objectName():
            names[child.objectName()] = wrap(child)
    return types.SimpleNamespace(**names)


# -- the qt module ------------------------------------------------------------------------------
def make_qt_module(dialog_answers):
    module = types.ModuleType("qt")
    module.__doc__ = "Stand-in for Slicer's PythonQt 'qt' module (see slicer_app_standin.py)."
    for name, entry in CLASSES.items():
        if entry["module"] in ("QtCore", "QtWidgets"):
            pyqt = getattr(QtCore if entry["module"] == "QtCore" else QtWidgets, name)
            hook = None
            if name == "QFileDialog":  # PythonQt returns the chosen path as a string
                hook = {fn: dialog_answers.file_dialog(fn) for fn in
                        ("getExistingDirectory", "getOpenFileName", "getSaveFileName")}
            setattr(module, name, QtClass(name, pyqt, hook))
    module.Qt = QtNamespace()
    return module


class DialogAnswers:
    """Answers to dialogs, set by the test; everything shown is recorded."""

    def __init__(self):
        self.files: list[str] = []
        self.confirm: list[bool] = []
        self.shown: list[tuple[str, str]] = []

    def file_dialog(self, kind):
        def answer(*args):
            self.shown.append((kind, str(args[1]) if len(args) > 1 else ""))
            if not self.files:
                raise AssertionError(f"the module opened a {kind} dialog the test did not expect")
            return self.files.pop(0)
        return answer

    def message(self, kind):
        def show(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
            self.shown.append((kind, str(text)))
            if kind == "confirm":
                return self.confirm.pop(0) if self.confirm else True
            return None
        return show

    def of_kind(self, kind):
        return [text for k, text in self.shown if k == kind]


_application = []  # the QApplication must outlive every widget


def ensure_application():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if not _application:
        _application.append(QtWidgets.QApplication.instance() or QtWidgets.QApplication(["slicer-standin"]))
    return _application[0]


# -- Slicer's Python side: scripted-module base classes, parameter node wrapper, slicer.util ----
class ModulePanel:
    """Stands in for qSlicerScriptedLoadableModuleWidget, the module panel that owns the widget."""

    def __init__(self):
        self.widget = qMRMLWidget()
        self.widget.setLayout(QtWidgets.QVBoxLayout())
        self.isEntered = True

    def layout(self):
        return wrap(self.widget.layout())


def make_scripted_loadable_module():
    import unittest

    import slicer

    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = self.__class__.__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.moduleName = self.__class__.__name__[:-len("Widget")]
            self.parent = parent if parent is not None else ModulePanel()
            self.layout = self.parent.layout()
            self.developerMode = False

        def resourcePath(self, filename):
            folder = os.path.dirname(sys.modules[self.__class__.__module__].__file__)
            return os.path.join(folder, "Resources", filename)

        def setup(self):
            pass

        def cleanup(self):
            pass

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = self.__class__.__name__[:-len("Logic")]

        def getParameterNode(self):
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
                node.UnRegister(None)
                node.SetSingletonTag(self.moduleName)
                node.SetModuleName(self.moduleName)
                node.SetName(scene.GenerateUniqueName(self.moduleName))
                node = scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=1000):
            slicer.util.delayDisplay(message, msec)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


def make_parameter_node_wrapper():
    """``slicer.parameterNodeWrapper``: typed fields stored in a vtkMRMLScriptedModuleNode
    (parameters as strings, MRML nodes as node references) and bound to widgets that carry a
    ``SlicerParameterName`` property, both ways, as Slicer's wrapper does."""
    import typing

    import slicer
    import vtk

    module = types.ModuleType("slicer.parameterNodeWrapper")

    def parameterNodeWrapper(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {}
        for name, hint in hints.items():
            choices = None
            if typing.get_origin(hint) is typing.Annotated:
                base, *extras = typing.get_args(hint)
                choices = next((e.choices for e in extras if isinstance(e, Choice)), None)
                hint = base
            fields[name] = (hint, getattr(cls, name, None), choices)

        def is_node(hint):
            return isinstance(hint, type) and issubclass(hint, slicer.vtkMRMLNode)

        class Wrapper:
            def __init__(self, node):
                object.__setattr__(self, "parameterNode", node)
                object.__setattr__(self, "_guis", {})
                for name, (hint, default, _) in fields.items():
                    if not is_node(hint) and not node.GetParameter(name) and default is not None:
                        setattr(self, name, default)

            def __getattr__(self, name):
                if name not in fields:
                    raise AttributeError(name)
                hint, default, _ = fields[name]
                node = object.__getattribute__(self, "parameterNode")
                if is_node(hint):
                    return node.GetNodeReference(name)
                text = node.GetParameter(name)
                if hint is bool:
                    return text == "true"
                if hint is Path:
                    return Path(text) if text else Path()
                return text

            def __setattr__(self, name, value):
                if name not in fields:
                    raise AttributeError(f"{cls.__name__} has no parameter '{name}'")
                hint, default, choices = fields[name]
                node = object.__getattribute__(self, "parameterNode")
                if is_node(hint):
                    if value is not None and not value.IsA(hint.__name__):
                        raise TypeError(f"{name} must be a {hint.__name__}")
                    new_id = value.GetID() if value is not None else None
                    if node.GetNodeReferenceID(name) != new_id:
                        node.SetNodeReferenceID(name, new_id)
                        node.Modified()
                    return
                if choices is not None and value not in choices:
                    raise ValueError(f"{name} must be one of {choices}")
                text = ("true" if value else "false") if hint is bool else str(value)
                node.SetParameter(name, text)

            # forwarded to the node, as Slicer's wrapper does
            def AddObserver(self, event, callback, priority=0.0):
                return self.parameterNode.AddObserver(event, callback, priority)

            def RemoveObserver(self, tag):
                self.parameterNode.RemoveObserver(tag)

            def Modified(self):
                self.parameterNode.Modified()

            def StartModify(self):
                return self.parameterNode.StartModify()

            def EndModify(self, was_modified):
                return self.parameterNode.EndModify(was_modified)

            def connectGui(self, ui):
                node = object.__getattribute__(self, "parameterNode")
                bindings = []
                for widget in vars(ui).values():
                    raw = unwrap(widget)
                    name = raw.property("SlicerParameterName") if isinstance(raw, QtCore.QObject) else None
                    if name:
                        bindings.append(_bind(self, raw, name, fields[name]))
                # as Slicer's wrapper: GUI -> parameter writes inside StartModify/EndModify,
                # parameter -> GUI updates ignore the widgets' own change signals meanwhile
                state = {"updating": False}

                def to_gui(*_):
                    if state["updating"]:
                        return
                    state["updating"] = True
                    was_modified = node.StartModify()
                    try:
                        for push, _pull in bindings:
                            push()
                    finally:
                        node.EndModify(was_modified)
                        state["updating"] = False
                for push, pull in bindings:
                    pull(state)
                to_gui()
                tag = node.AddObserver(vtk.vtkCommand.ModifiedEvent, to_gui)
                object.__getattribute__(self, "_guis")[tag] = bindings
                return tag

            def disconnectGui(self, tag):
                node = object.__getattribute__(self, "parameterNode")
                for _push, pull in object.__getattribute__(self, "_guis").pop(tag, []):
                    pull(None)
                if tag is not None:
                    node.RemoveObserver(tag)

        Wrapper.__name__ = Wrapper.__qualname__ = cls.__name__
        return Wrapper

    def _bind(wrapper, widget, name, field):
        hint, _default, choices = field
        connections = []

        def connect(signal, slot):
            signal.connect(slot)
            connections.append((signal, slot))

        if isinstance(widget, qMRMLNodeComboBox):
            def push():
                widget.setCurrentNode(getattr(wrapper, name))
            signal, read = widget.currentNodeChanged, lambda *a: widget.currentNode()
        elif isinstance(widget, QtWidgets.QCheckBox):
            def push():
                widget.setChecked(bool(getattr(wrapper, name)))
            signal, read = widget.toggled, lambda *a: widget.isChecked()
        elif isinstance(widget, QtWidgets.QComboBox):
            widget.clear()
            widget.addItems(choices or [])

            def push():
                widget.setCurrentText(getattr(wrapper, name))
            signal, read = widget.currentTextChanged, lambda *a: widget.currentText()
        elif isinstance(widget, ctkPathLineEdit):
            def push():
                path = getattr(wrapper, name)
                widget.setCurrentPath("" if str(path) == "." else str(path))
            signal, read = widget.currentPathChanged, lambda *a: Path(widget.currentPath())
        else:
            raise TypeError(f"no parameter binding for {type(widget).__name__} ({name})")

        def pull(state):
            if state is None:
                for s, slot in connections:
                    s.disconnect(slot)
                connections.clear()
                return

            def changed(*args):
                if state["updating"]:
                    return
                node = wrapper.parameterNode
                was_modified = node.StartModify()
                try:
                    setattr(wrapper, name, read())
                finally:
                    node.EndModify(was_modified)
            connect(signal, changed)
        return push, pull

    module.parameterNodeWrapper = parameterNodeWrapper
    module.Choice = Choice
    return module


class App:
    """``slicer.app``, as much of it as the module uses."""

    def __init__(self, settings_dir):
        self.slicerUserSettingsFilePath = str(Path(settings_dir) / "Slicer.ini")
        self.qt = ensure_application()

    def processEvents(self):
        self.qt.processEvents()


class WaitCursor:
    used = 0

    def __enter__(self):
        WaitCursor.used += 1
        return self

    def __exit__(self, *exc):
        return False


def install(monkeypatch, scene, settings_dir):
    """Put the stand-in in place for one test (monkeypatch undoes it); returns DialogAnswers."""
    import slicer
    import slicer.util

    ensure_application()
    violations.clear()
    handler_errors.clear()
    answers = DialogAnswers()
    monkeypatch.setitem(sys.modules, "qt", make_qt_module(answers))
    ctk = types.ModuleType("ctk")
    for cls in (ctkCollapsibleButton, ctkPathLineEdit):
        setattr(ctk, cls.__name__, QtClass(cls.__name__, cls))
    monkeypatch.setitem(sys.modules, "ctk", ctk)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    for name, module in (("slicer.i18n", i18n),
                         ("slicer.ScriptedLoadableModule", make_scripted_loadable_module()),
                         ("slicer.parameterNodeWrapper", make_parameter_node_wrapper())):
        monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(slicer, name.split(".")[1], module, raising=False)
    for name in ("LKMSegment", "LKMSegmentLib.qtprocess"):
        # imported afresh on the stand-in, and forgotten again afterwards (monkeypatch restores
        # the previous entry, or none)
        monkeypatch.setitem(sys.modules, name, None)
        del sys.modules[name]
    monkeypatch.setattr(slicer, "app", App(settings_dir), raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    patches = {
        "loadUI": lambda path: wrap(load_ui(path)),
        "childWidgetVariables": child_widget_variables,
        "errorDisplay": answers.message("error"),
        "warningDisplay": answers.message("warning"),
        "infoDisplay": answers.message("info"),
        "confirmOkCancelDisplay": answers.message("confirm"),
        "delayDisplay": lambda message, autoCloseMsec=1000, **kw: answers.shown.append(("delay", message)),
        "WaitCursor": WaitCursor,
        "pip_install": lambda *a, **k: (_ for _ in ()).throw(AssertionError("the test must not pip install")),
    }
    for name, value in patches.items():
        monkeypatch.setattr(slicer.util, name, value)
    return answers
