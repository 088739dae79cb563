"""Ralph's LRS app with its filesystem backend appending to its file.

Ralph 5.1's `fs` LRS backend writes each request with the CREATE operation, so every POST
after the first answers 500 ("file already exists"). The benchmark starts Ralph through
this module, which switches the backend to APPEND and then loads Ralph's own app.
"""
from ralph.backends.data.base import BaseOperationType
from ralph.backends.lrs.fs import FSLRSBackend

FSLRSBackend.default_operation_type = BaseOperationType.APPEND

from ralph.api import app  # noqa: E402,F401
