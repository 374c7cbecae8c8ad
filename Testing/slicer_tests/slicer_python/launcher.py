"""Stand-in for Slicer's ``PythonSlicer`` launcher (a CTK app launcher).

Like the real one it sets up the environment, runs the real interpreter as its *child* with the
same arguments, waits for it and exits with its exit code; it forwards no signal: terminating
the launcher leaves the child running. Output streams are inherited.
"""

import subprocess
import sys

if __name__ == "__main__":
    child = subprocess.Popen([sys.executable, *sys.argv[1:]])
    sys.exit(child.wait())
