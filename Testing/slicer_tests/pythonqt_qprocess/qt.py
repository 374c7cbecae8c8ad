"""Test-only stand-in for Slicer's PythonQt ``qt`` module, as far as QProcess goes.

The Slicer application cannot run here, so LKMSegmentLib/qtprocess.py is driven with a real
QProcess from PyQt5 (QtCore only, no display needed) under the names PythonQt gives it. It
follows PythonQt's rules where they differ from PyQt5's for what qtprocess.py uses:

- a signal with overloads is connected with ``.connect(callable)`` on whichever overload the
  binding chose; PythonQt does not promise which ``finished`` overload that is, so the stand-in
  binds the one named by ``FINISHED_OVERLOAD`` ("int" = ``finished(int)``, the exit code only;
  "int,status" = ``finished(int, QProcess::ExitStatus)``) and the runner must cope with both;
- enums are read from the class (``qt.QProcess.CrashExit``, ``qt.QProcess.FailedToStart``);
- QProcess has no Qt properties that qtprocess.py reads; ``processId()``, ``exitCode()``,
  ``errorString()``, ``readAllStandardOutput()`` are methods in PythonQt too, and the byte
  arrays they return have ``data()``.
"""

from PyQt5 import QtCore

FINISHED_OVERLOAD = "int"

QCoreApplication = QtCore.QCoreApplication
QProcessEnvironment = QtCore.QProcessEnvironment
QTimer = QtCore.QTimer


class _ExitCodeOnly:
    """``finished(int)``: Qt 5 declares it (deprecated) but PyQt5 does not wrap it, so it is
    made from the two-argument signal by handing the slot the exit code alone."""

    def __init__(self, signal):
        self._signal = signal

    def connect(self, slot):
        self._signal.connect(lambda code, status: slot(code))


class QProcess(QtCore.QProcess):
    @property
    def finished(self):
        signal = super().finished
        return _ExitCodeOnly(signal) if FINISHED_OVERLOAD == "int" else signal
