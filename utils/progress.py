"""Progress bars for long loops: live on a terminal, a plain line every few seconds in a log file.

When stderr is not a terminal (CI, nohup, a cluster's log file), tqdm's carriage-return updates
would pile up as hundreds of pieces of one line; there the bar prints a whole line at most every
`LOG_INTERVAL_S` seconds, nothing for a loop done sooner (the stages print a line per epoch and
per result) and nothing when it is closed. TQDM_DISABLE=1 silences both.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from utils.distributed import is_main

LOG_INTERVAL_S = 10.0


class _LogLines:
    """A file for tqdm that turns each redraw into one newline-terminated line of stderr."""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            sys.stderr.write(line + "\n")

    def flush(self) -> None:
        sys.stderr.flush()


def progress(iterable=None, *, total: int | None = None, desc: str = "", initial: int = 0, **kwargs):
    """A tqdm bar that does not stay on screen once done (the stages print their own summary line); none on the
    ranks of a torchrun job but rank 0."""
    if not is_main():
        kwargs["disable"] = True  # else tqdm's default, which TQDM_DISABLE=1 sets
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=False, dynamic_ncols=True, **kwargs)
    return tqdm(iterable, total=total, desc=desc, initial=initial, leave=False, file=_LogLines(),
                delay=LOG_INTERVAL_S, mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S * 6, ncols=100, **kwargs)
