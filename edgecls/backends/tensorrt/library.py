"""Importing TensorRT, and its one logger.

TensorRT keeps one logger for the whole process: the builder, runtime and parser of every
build and session must share it. The errors it reports are therefore told apart by
operation with ERRORS.capture(), not by a logger per operation, so a failed build or
inference reports its own errors, never an old one.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Iterator

from edgecls.errors import MissingDependencyError, first_line

log = logging.getLogger("edgecls")


def import_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError) as e:   # OSError: the wheel is there, libnvinfer is not
        raise MissingDependencyError(f"TensorRT (the tensorrt Python package: {first_line(e)})",
                                     "tensorrt") from None
    return tensorrt


class ErrorLog:
    """The error messages TensorRT logs, kept while an operation captures them.

    Operations that overlap in time (two threads building at once) see each other's
    errors too; messages logged outside any capture are only logged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._open = 0

    def add(self, message: str) -> None:
        with self._lock:
            if self._open:
                self._errors.append(first_line(message, join=True))

    @contextlib.contextmanager
    def capture(self) -> Iterator[Callable[..., str]]:
        """Yields errors(default) -> the errors logged since the capture began, in one line."""
        with self._lock:
            self._open += 1
            start = len(self._errors)

        def errors(default: str = "no message from TensorRT") -> str:
            with self._lock:
                mine = self._errors[start:]
            return first_line("; ".join(mine)) if mine else default

        try:
            yield errors
        finally:
            with self._lock:
                self._open -= 1
                if not self._open:
                    self._errors.clear()


ERRORS = ErrorLog()
_logger: Any = None
_logger_lock = threading.Lock()


def tensorrt_logger(trt) -> Any:
    """The process's one trt.ILogger: warnings and errors go to the edgecls logger, errors
    also to ERRORS."""
    global _logger
    with _logger_lock:
        if _logger is None:
            _logger = _make_logger(trt)
        return _logger


def _make_logger(trt) -> Any:
    severity = trt.ILogger.Severity
    to_logging = {severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR,
                  severity.WARNING: logging.WARNING}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, sev, msg):  # called by TensorRT, possibly from its own threads
            if sev in (severity.INTERNAL_ERROR, severity.ERROR):
                ERRORS.add(str(msg))
            if sev in to_logging:
                log.log(to_logging[sev], "TensorRT: %s", msg)

    return _Logger()
