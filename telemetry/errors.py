"""The error a person running aifmon can fix.

`UserError` (and its kinds, such as `InventoryError`) means bad input: a file, a flag, a URL. The CLI prints its
message and exits 2. Anything else that escapes is a fault in aifmon and ends in a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Bad input from the person running aifmon; the message names the input and says what to do."""


@contextmanager
def user_input(*kinds: type[Exception], about: str = "") -> Iterator[None]:
    """Treat exceptions of `kinds` raised inside as the user's input at fault: re-raise them as a UserError.

    For a call whose failures of these kinds can only come from what the user gave it (a file they named, a
    port they chose). `about` goes before the message where it does not name the input itself, as an
    OSError's does not: `with user_input(OSError, about=f"cannot listen on {listen}"): ...`.
    """
    try:
        yield
    except kinds as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UserError(f"{about}: {detail}" if about else detail) from None
