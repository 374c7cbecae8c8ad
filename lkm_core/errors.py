"""One exception family for the engine.

Messages are written for the user: what was wrong, with which file, and what to do.
The CLI prints them as one line on stderr; only unexpected exceptions get a traceback.
"""

import errno


class LKMError(Exception):
    """Base of every error the engine raises on purpose."""

    kind = "error"


class InputError(LKMError):
    """The image (or another user-supplied input) cannot be processed as given."""

    kind = "bad_input"


class ModelError(LKMError):
    """The model bundle is missing, incomplete, tampered with or incompatible."""

    kind = "bad_model"


class ResourceError(LKMError):
    """A missing dependency, no GPU when one was asked for, or out of memory."""

    kind = "resources"


class Cancelled(LKMError):
    """The user stopped the run."""

    kind = "cancelled"


class StorageError(ResourceError):
    """The operating system refused a file operation: permissions, a read-only or full disk, a
    quota, a name too long, a folder removed under the run. The user's to fix, not a bug."""

    def __init__(self, message: str, errno: int | None = None, path=None, writing: bool = True):
        super().__init__(message)
        self.errno = errno
        self.path = path
        self.writing = writing


# errnos that no later case can escape: the batch stops instead of computing the next case
# (ENOENT here is the output folder removed under the run)
_STOPS_THE_BATCH = {"ENOSPC", "EDQUOT", "EROFS", "ENOENT", "EACCES", "EPERM"}

_ADVICE = {
    "ENOSPC": "free some space or choose another output folder",
    "EDQUOT": "the disk quota is used up: free some space or choose another output folder",
    "EROFS": "the disk is read-only: choose another output folder",
    "EACCES": "no permission: check the file's and folder's permissions",
    "EPERM": "the operating system does not allow it: check the permissions",
    "ENOENT": "it does not exist (was the folder removed or unmounted?)",
    "ENAMETOOLONG": "the name is too long for this file system: use a shorter folder or case "
                    "name",
}


def storage_error(exc: OSError, action: str = "write", what: str = "") -> StorageError:
    """One plain line for an OSError: which file or folder, the cause, what to do."""
    name = errno.errorcode.get(exc.errno or 0, "")
    where = exc.filename or what or "a file"
    advice = _ADVICE.get(name, "")
    text = f"Cannot {action} {where}: {exc.strerror or exc}" + (f"; {advice}." if advice else ".")
    return StorageError(text, exc.errno, exc.filename, writing=action == "write")


def stops_the_batch(exc: BaseException) -> bool:
    """True for an OS error that every later case would meet too (full disk, read-only mount,
    a removed output folder): computing further cases would only waste the accelerator."""
    return (isinstance(exc, StorageError) and exc.writing
            and errno.errorcode.get(exc.errno or 0, "") in _STOPS_THE_BATCH)
