"""One exception family for the engine.

Messages are written for the user: what was wrong, with which file, and what to do.
The CLI prints them as one line on stderr; only unexpected exceptions get a traceback.
"""


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
