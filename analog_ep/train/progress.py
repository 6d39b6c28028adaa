"""Progress bars for long commands: tqdm on standard error when it is a terminal, silent
otherwise (a log file or a pipe gets no bar; callers print one line per unit of work if any)."""
from __future__ import annotations

import sys
from typing import Iterable

from tqdm import tqdm


def progress_bar(iterable: Iterable | None, desc: str, *, total: float | None = None, show: bool = True) -> tqdm:
    """A tqdm bar over ``iterable`` (or, with ``None``, one advanced by ``update(n)`` towards
    ``total``) labelled ``desc``, drawn on standard error only if it is a terminal and ``show``;
    otherwise a pass-through that draws nothing. The bar is cleared when it finishes."""
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=not (show and sys.stderr.isatty()))


def echo(line: str) -> None:
    """Print ``line`` on standard error without breaking a progress bar being drawn there."""
    tqdm.write(line, file=sys.stderr)
