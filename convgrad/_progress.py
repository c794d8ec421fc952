"""A plain-text progress bar for the command line (no dependency)."""

from __future__ import annotations

import sys
from typing import TextIO


class ProgressBar:
    r"""``[#######-------]  37/120  label`` redrawn in place on a terminal.

    Draws only when ``stream`` is a terminal (or ``enabled=True``): piped or
    captured output stays free of carriage returns.

    Parameters
    ----------
    total : int
        Number of steps.
    stream : file, optional
        Where to draw; sys.stderr by default, so stdout keeps only results.
    enabled : bool, optional
        Force drawing on or off; by default, on when ``stream.isatty()``.
    width : int
        Characters inside the brackets.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> bar = ProgressBar(4, stream=out, enabled=True, width=8)
    >>> bar.update(1, "rows NCHW")
    >>> out.getvalue()
    '\r[##------]  1/4  rows NCHW'
    """

    def __init__(
        self, total: int, stream: TextIO | None = None, enabled: bool | None = None, width: int = 30
    ) -> None:
        self.total = max(0, total)
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.width = width
        self._drawn = 0  # length of the last line, to blank it out

    def update(self, done: int, label: str = "") -> None:
        """Redraw the bar at ``done`` steps of ``total``, with ``label`` after it."""
        if not self.enabled:
            return
        filled = self.width * done // self.total if self.total else self.width
        digits = len(str(self.total))
        line = (
            f"[{'#' * filled}{'-' * (self.width - filled)}]  {done:>{digits}}/{self.total}  {label}"
        )
        pad = " " * max(0, self._drawn - len(line))
        self.stream.write(f"\r{line}{pad}")
        self.stream.flush()
        self._drawn = len(line)

    def close(self) -> None:
        """Blank the bar's line, so that what is printed next starts clean."""
        if self.enabled and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0
