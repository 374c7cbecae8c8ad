"""The Slicer stand-in (slicer_app_standin.py) refuses what PythonQt refuses.

If the stand-in accepted everything, the widget test would prove nothing: these checks show it
applies PythonQt's rules (from pythonqt_api.json) to calls the module could plausibly get wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slicer_app_standin as standin

TABLE = json.loads((Path(__file__).resolve().parent / "pythonqt_api.json").read_text(encoding="utf-8"))


@pytest.fixture
def qt():
    standin.ensure_application()
    standin.violations.clear()
    standin.handler_errors.clear()
    return standin.make_qt_module(standin.DialogAnswers())


def test_table_names_its_sources_and_has_the_injected_menu_action():
    sources = TABLE["sources"]
    assert sources["pythonqt"]["repository"] == "MeVisLab/pythonqt"
    assert len(sources["pythonqt"]["commit"]) == 40 and sources["slicer"]["commit"] == "v5.12.3"
    menu = TABLE["classes"]["QMenu"]
    assert "addAction" in menu["injected"]  # typesystem_gui.xml, not Qt's own API
    forms = [f["types"] for f in menu["wrapper"]["methods"]["addAction"]]
    assert ["QString&", "PyObject*", "QKeySequence&"] in forms


def test_properties_are_attributes_not_methods(qt):
    label = qt.QLabel()
    label.text = "ready"
    assert label.text == "ready"
    with pytest.raises(TypeError):
        label.text()  # a str is not callable: PythonQt gives the property's value
    combo = qt.QComboBox()
    combo.addItem("model", "/models/default")
    assert combo.currentData == "/models/default" and combo.count == 1
    with pytest.raises(TypeError):
        combo.currentData()
    lst = qt.QListWidget()
    with pytest.raises(TypeError):
        lst.count()


def test_unknown_attributes_keyword_arguments_and_wrong_forms_are_refused(qt):
    button = qt.QPushButton()
    with pytest.raises(AttributeError):
        button.pyqtConfigure  # PyQt's, not PythonQt's
    with pytest.raises(AttributeError):
        button.myFlag = True  # C++ wrappers take no new attributes
    with pytest.raises(TypeError, match="keyword"):
        button.setText(text="x")
    with pytest.raises(TypeError, match="no such call"):
        qt.QProgressBar().setRange(0)
    with pytest.raises(TypeError, match="no such constructor"):
        qt.QListWidgetItem(3.5)
    with pytest.raises(AttributeError):
        qt.Qt.NoSuchFlag
    assert len(standin.violations) == 6


def test_menu_actions_with_a_callable_signals_and_handler_arguments(qt):
    calls = []
    menu = qt.QMenu()
    action = menu.addAction("Model folder…", lambda: calls.append("folder"))
    standin.unwrap(action).trigger()  # triggered(bool): a lambda without arguments gets none
    assert calls == ["folder"]
    with pytest.raises(TypeError):
        menu.addAction("text", "not callable", "nor a member")
    box = qt.QCheckBox()
    box.toggled.connect(lambda checked: calls.append(checked))
    with pytest.raises(TypeError):
        box.toggled.connect(lambda: None, "extra")
    box.checked = True
    assert calls[-1] is True

    def broken():
        raise RuntimeError("handler failed")
    box.toggled.connect(broken)  # connecting is fine; the error is recorded when it runs
    box.checked = False
    assert standin.handler_errors and "handler failed" in standin.handler_errors[-1]


def test_file_dialogs_answer_with_a_path_string_as_in_pythonqt():
    answers = standin.DialogAnswers()
    qt = standin.make_qt_module(answers)
    answers.files.append("/data/bundle.zip")
    assert qt.QFileDialog.getOpenFileName(None, "Model bundle", "", "Model bundle (*.zip)") == "/data/bundle.zip"
    with pytest.raises(TypeError):
        qt.QFileDialog.getOpenFileName(parent=None)


def test_list_items_are_wrapped_values_with_method_forms(qt):
    item = qt.QListWidgetItem("liver")
    item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
    item.setCheckState(qt.Qt.Checked)
    assert item.text() == "liver" and item.checkState() == qt.Qt.Checked
    with pytest.raises(AttributeError):
        item.checked = True


def test_every_ui_widget_use_in_the_module_is_a_pythonqt_form():
    """Static sweep over LKMSegment.py (every branch, also those no test clicks through): each
    ``self.ui.<widget>.<member>`` is used the way PythonQt offers it for that widget's class."""
    import ast
    import xml.etree.ElementTree as ET

    repo = Path(__file__).resolve().parents[2]
    ui_classes = {w.get("name"): w.get("class") for w in
                  ET.parse(repo / "LKMSegment" / "Resources" / "UI" / "LKMSegment.ui").getroot().iter("widget")}
    tree = ast.parse((repo / "LKMSegment" / "LKMSegment.py").read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    problems, checked = [], 0
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            continue
        use = parents[node]
        if not (isinstance(use, ast.Attribute) and use.value is node):
            continue  # the widget itself is passed around
        widget, member = node.attr, use.attr
        cls = ui_classes[widget]
        kind, data = standin.lookup(cls, member)
        outer = parents[use]
        where = f"line {use.lineno}: self.ui.{widget}.{member} ({cls})"
        checked += 1
        if isinstance(outer, ast.Call) and outer.func is use:
            if kind != "method":
                problems.append(f"{where} is called, but in PythonQt it is a {kind or 'missing name'}")
            elif outer.keywords or not any(f["required"] <= len(outer.args) <= len(f["types"]) for f in data):
                problems.append(f"{where}: {len(outer.args)} arguments; PythonQt offers {standin._forms(data)}")
        elif isinstance(outer, ast.Attribute):
            if kind != "signal" or outer.attr not in ("connect", "disconnect", "emit"):
                problems.append(f"{where}.{outer.attr}: not a signal's connect/disconnect/emit")
        elif kind != "property":
            problems.append(f"{where} is used as a value, but in PythonQt it is a {kind or 'missing name'}")
        elif isinstance(use.ctx, ast.Store) and not data["writable"]:
            problems.append(f"{where} is assigned, but the property is read-only")
    assert checked > 40
    assert not problems, "\n".join(problems)


def _volumes_combo(scene, none_enabled):
    """The input selector as the .ui makes it, seen through PythonQt's rules."""
    combo = standin.wrap(standin.qMRMLNodeComboBox())
    combo.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    combo.noneEnabled = none_enabled
    combo.setMRMLScene(scene)
    changes = []
    combo.currentNodeChanged.connect(lambda node: changes.append(node))
    return combo, changes


def test_hidden_node_ids_filter_the_combo_box_list_and_move_the_selection_as_qt_does(qt):
    """qMRMLSortFilterProxyModel.hiddenNodeIDs (a QStringList property, a tuple in PythonQt) takes
    nodes out of the list; a hidden current node gives way to the row that takes its place (Qt's
    QComboBox on a removed current row), or to nothing when no row is left."""
    import slicer

    scene = slicer.vtkMRMLScene()
    a, b, c = (scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name) for name in "ABC")
    combo, changes = _volumes_combo(scene, none_enabled=False)
    assert combo.currentNode() is a and combo.nodeCount() == 3
    proxy = combo.sortFilterProxyModel()
    with pytest.raises(TypeError):
        proxy.hiddenNodeIDs()  # a property: its value, not a method

    proxy.hiddenNodeIDs = [b.GetID()]
    assert proxy.hiddenNodeIDs == (b.GetID(),)
    assert [combo.nodeFromIndex(i) for i in range(combo.nodeCount())] == [a, c]
    assert combo.currentNode() is a and changes == []  # another node hidden: the selection stays

    proxy.hiddenNodeIDs = [b.GetID(), a.GetID()]  # the current node, row 0: row 0 is now C
    assert combo.currentNode() is c and changes == [c]
    combo.setCurrentNode(a)  # a hidden node has no row: nothing is selected
    assert combo.currentNode() is None and changes == [c, None]
    proxy.hiddenNodeIDs = []  # rows back, but the list was not empty: still nothing selected (as in Qt)
    assert combo.currentNode() is None and combo.nodeCount() == 3
    combo.setCurrentNode(c)
    proxy.hiddenNodeIDs = [c.GetID()]  # the last row: the new last row (B) takes over
    assert combo.currentNode() is b and changes[-1] is b
    proxy.hiddenNodeIDs = [a.GetID(), b.GetID(), c.GetID()]
    assert combo.currentNode() is None and combo.nodeCount() == 0 and changes[-1] is None
    proxy.hiddenNodeIDs = []  # rows into an empty combo box: the first one becomes current
    assert combo.currentNode() is a and changes[-1] is a

    with_none, changes = _volumes_combo(scene, none_enabled=True)  # rows: 'None', A, B, C
    with_none.setCurrentNode(b)
    with_none.sortFilterProxyModel().hiddenNodeIDs = [b.GetID()]  # row 2 is now C
    assert with_none.currentNode() is c and changes[-1] is c
    with_none.sortFilterProxyModel().hiddenNodeIDs = [a.GetID(), b.GetID(), c.GetID()]  # only 'None' left
    assert with_none.currentNode() is None and changes[-1] is None and with_none.nodeCount() == 0


def _qt_combo_after_filtering(items, current, steps):
    """The text a real QComboBox (Qt 5.15, PyQt5's libraries) over a QSortFilterProxyModel shows
    after each change of the hidden items: Qt's own rule, which the stand-in must follow."""
    from PyQt5 import QtCore, QtGui, QtWidgets

    class Filter(QtCore.QSortFilterProxyModel):
        hidden = ()

        def filterAcceptsRow(self, row, parent):
            return self.sourceModel().item(row).text() not in self.hidden

    source = QtGui.QStandardItemModel()
    for text in items:
        source.appendRow(QtGui.QStandardItem(text))
    proxy = Filter()
    proxy.setSourceModel(source)
    combo = QtWidgets.QComboBox()
    combo.setModel(proxy)
    combo.setCurrentIndex(items.index(current))
    shown = []
    for hidden in steps:
        proxy.hidden = tuple(hidden)
        proxy.invalidateFilter()
        shown.append(combo.currentText())
    return shown


@pytest.mark.parametrize("none_enabled, current, steps", [
    (False, "A", [["B"], ["A", "B"], ["A", "B", "C", "D"], []]),
    (False, "D", [["D"], ["C", "D"]]),
    (False, "B", [["B", "C"]]),
    (True, "B", [["B"], ["B", "C"], ["A", "B", "C", "D"]]),
])
def test_the_stand_ins_selection_rule_is_qts_own(qt, none_enabled, current, steps):
    import slicer

    scene = slicer.vtkMRMLScene()
    nodes = {name: scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name) for name in "ABCD"}
    combo, _ = _volumes_combo(scene, none_enabled)
    combo.setCurrentNode(nodes[current])
    shown = []
    for hidden in steps:
        combo.sortFilterProxyModel().hiddenNodeIDs = [nodes[name].GetID() for name in hidden]
        node = combo.currentNode()
        shown.append(node.GetName() if node is not None else ("None" if none_enabled else ""))
    assert shown == _qt_combo_after_filtering((["None"] if none_enabled else []) + list("ABCD"), current, steps)
