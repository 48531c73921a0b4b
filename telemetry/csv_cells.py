"""CSV formula injection: spreadsheet programs run a cell that starts with `=`, `+`, `-` or `@` (and, in
some of them, a tab or carriage return) as a formula, so a project name or job label such as
`=HYPERLINK("http://x")` in an exported CSV would run on the reader's machine. OWASP's rule: prefix such a
text cell with a single quote, which spreadsheets show and never evaluate. Numbers are left as numbers
(a negative figure starts with `-` but is not text), so the files still load as data."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the kernel does not load pandas for the modules that never write CSV
    import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: object) -> object:
    """`value` with a single quote in front when it is text a spreadsheet would run as a formula; anything
    else (numbers, NaN, other text) unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` with every text cell neutralised (`neutralise_cell`); numeric columns untouched."""
    safe = frame.copy()
    for column in frame.select_dtypes(exclude="number").columns:
        safe[column] = frame[column].map(neutralise_cell)
    return safe
