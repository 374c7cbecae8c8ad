"""``slicer.util``'s pip helpers as Slicer's ``Base/Python/slicer/util.py`` writes them, for the
replica of Slicer's Python (no Qt, so no GUI refresh while a command runs).

``_executePythonModule`` runs ``python -m <module> <args>`` with Slicer's interpreter and raises
CalledProcessError when it fails. Slicer runs PythonSlicer next to its executable; in the replica
that interpreter is the venv's own ``python``, i.e. ``sys.executable``.
"""

import logging
import shlex
import subprocess
import sys


def launchConsoleProcess(args, useStartupEnvironment=True, updateEnvironment=None, cwd=None):
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)


def logProcessOutput(proc):
    for line in proc.stdout:
        logging.info(line.rstrip())
    proc.wait()
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args)


def _executePythonModule(module, args):
    commandLine = [sys.executable, "-m", module, *args]
    proc = launchConsoleProcess(commandLine, useStartupEnvironment=False)
    logProcessOutput(proc)


def pip_install(requirements):
    args = "install", *(shlex.split(requirements) if isinstance(requirements, str) else requirements)
    _executePythonModule("pip", args)
