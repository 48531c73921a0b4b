"""The error a person running aifmon can fix.

`UserError` (and its kinds, such as `InventoryError`) means bad input: a file, a flag, a URL. The CLI prints its
message and exits 2. Anything else that escapes is a fault in aifmon and ends in a traceback.
"""


class UserError(Exception):
    """Bad input from the person running aifmon; the message names the input and says what to do."""
