"""Start-up work that no search needs (ranking the benchmark for the failure view, encoding the
prompt view's caption bank) waits for the app's first answer, so that it never delays it."""
import logging
import threading

logger = logging.getLogger(__name__)


class AfterFirstAnswer:
    """Work to run once, after the first search has answered (at once if one already has)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._answered = False
        self._pending: list = []

    def add(self, work) -> None:
        with self._lock:
            if not self._answered:
                self._pending.append(work)
                return
        work()

    def answered(self) -> None:
        """Called by every answered search; runs the pending work the first time only."""
        if self._answered:
            return
        with self._lock:
            if self._answered:
                return
            self._answered, pending, self._pending = True, self._pending, []
        for work in pending:
            try:
                work()
            except Exception:  # background preparations must never fail the answer that triggered them
                logger.exception("work waiting for the first answer failed")
