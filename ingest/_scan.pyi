"""Types of the C extension `_scan.c` (see it for what each function computes). Buffers are contiguous NumPy arrays of
the dtypes named; outputs are written in place."""

import numpy as np

Buffer = bytes | np.ndarray  # contiguous; collections.abc.Buffer (Python 3.12) would take any

def scan_lines(buf: Buffer, lo: int, hi: int, lines_before: int, start: Buffer, series_end: Buffer, value_end: Buffer, end: Buffer,
               line_no: Buffer, value: Buffer, ts: Buffer, hashes: Buffer) -> tuple[int, int]:
    """(lines found, index of the first bad line (malformed, or a value or timestamp that is no number) or -1); outputs
    int64, float64 (value, ts), 2 x uint64 (hashes)."""

def count_lines(buf: Buffer, lo: int, hi: int) -> int:
    """The newlines in buf[lo:hi]."""

def gather(buf: Buffer, starts: Buffer, ends: Buffer, out: Buffer) -> None:
    """The int64 byte ranges [starts, ends) of `buf`, one after the other into `out` (at least their total length)."""

def series_keys(data: Buffer, offsets: Buffer, t_names: Buffer, t_name_ends: Buffer, t_values: Buffer, t_value_ends: Buffer,
                out: Buffer, metric_start: Buffer, metric_end: Buffer, out_offsets: Buffer) -> tuple[int, int]:
    """(first bad text or -1, problem code: 0 fine, -1 `out` too small, else `series_keys.PROBLEMS`)."""
