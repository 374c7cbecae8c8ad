"""What the Stop tests and the Stop benchmark see of a process tree, with psutil, independently
of the module's own code under test."""

import psutil


def process_tree(pid):
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def alive(pids):
    """The pids of ``pids`` still running (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out
