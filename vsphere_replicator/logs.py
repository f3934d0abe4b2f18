"""Structured logging: context bound once, events with fields, secrets redacted.

The library only logs through structlog and never configures logging for the
application; `configure_logging()` is a convenience for scripts, notebooks
and the CLI. `redact_secrets` is a processor: it removes passwords, session
cookies and tokens from any event, whatever the configuration.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"pass(word)?|pwd|secret|token|cookie|session_?id|authorization", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"(?P<lead>vmware_soap_session=\"?|(?:password|pwd)=)[^\"&;\s]+", re.IGNORECASE)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUE.sub(lambda m: m.group("lead") + REDACTED, value)
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no password, cookie or token leaves in a log event."""
    for key in list(event):
        event[key] = REDACTED if _SECRET_KEY.search(key) else _scrub(event[key])
    return event


class StderrLogger:
    """Prints each event to `sys.stderr` as it is *when the event is written*.

    structlog's PrintLogger keeps the stream it was given: after a test
    runner or a notebook swaps `sys.stderr` and closes the old one, every
    later event fails with "I/O operation on closed file".
    """

    _lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = err = msg


def _stderr_logger(*_args: Any) -> StderrLogger:
    return StderrLogger()


def configure_logging(*, json: bool = False, level: int = logging.INFO) -> None:
    """Set up structlog for an application: console or JSON lines on stderr."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    """A logger with `context` (vm, disk, operation, …) bound to every event.

    When the application configured structlog, its processors apply, with
    `redact_secrets` first; otherwise events go to the standard `logging`
    logger "vsphere_replicator", so an unconfigured application sees only
    warnings, on stderr, as Python's logging does by default.
    """
    if structlog.is_configured():
        config = structlog.get_config()
        logger = structlog.wrap_logger(
            config["logger_factory"](),
            processors=[redact_secrets, *config["processors"]],
            wrapper_class=config["wrapper_class"],
            context_class=config["context_class"],
            cache_logger_on_first_use=False,
        )
    else:
        logger = structlog.wrap_logger(
            logging.getLogger("vsphere_replicator"),
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.filter_by_level,
                redact_secrets,
                structlog.processors.KeyValueRenderer(key_order=["event"]),
            ],
            wrapper_class=structlog.stdlib.BoundLogger,
        )
    return logger.bind(**context)
