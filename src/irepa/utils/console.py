"""Log records on the console without breaking progress bars.

A plain ``StreamHandler`` writes a warning (a skipped image, a damaged cache file) right after the
bar's current text, so the message lands in the middle of the bar's line; :class:`ProgressSafeHandler`
writes through ``tqdm.write``, which clears the bars, prints the message on its own line and draws
them again below it.
"""

from __future__ import annotations

import logging


class ProgressSafeHandler(logging.StreamHandler):
    """A ``StreamHandler`` (stderr by default) whose records are printed above any active tqdm bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise; report as logging does
            self.handleError(record)


def setup_logging(level: int = logging.INFO, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """``logging.basicConfig`` for a command that shows progress bars (a no-op when logging is configured)."""
    logging.basicConfig(level=level, format=fmt, handlers=[ProgressSafeHandler()])
