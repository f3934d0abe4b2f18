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
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from structlog.tracebacks import ExceptionDictTransformer

REDACTED = "[redacted]"

# Names that make a key, a field or an element a secret. The bare word "pass" only counts as a
# whole word ("--pass", "db_pass"), so "bypass" or "passes" stay readable.
_SECRET_WORDS = (
    r"pass(?:word|wd|phrase)|pwd|secret|token|cookie|credentials?|authori[sz]ation"
    r"|api[_-]?key|session[_-]?(?:id|key)|soap_session"
)
_SECRET_KEY = re.compile(rf"{_SECRET_WORDS}|(?<![a-z])pass(?![a-z])", re.IGNORECASE)
_KEY = rf"[\w.-]*?(?:{_SECRET_WORDS})|(?:[\w.-]*[_.-])?pass"
# A value ends where the text says it does: at its closing quote, or at whitespace when it is not
# quoted (a password may hold '&', ';' or ','; a URL query escapes '&', a secret cannot be trusted
# to). An Authorization value keeps its scheme: "Basic <token>" is redacted as a whole.
_VALUE = r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|(?:(?:basic|bearer|digest|negotiate)[ \t]+)?\S+)"""

# (pattern, replacement): each keeps what names the secret and drops only the secret itself.
_SECRET_TEXT: tuple[tuple[re.Pattern[str], Any], ...] = (
    # <password>x</password>, <ns:token attr="…">x</ns:token>
    (
        re.compile(rf"(?P<open><(?P<tag>(?:[\w.-]+:)?(?:{_KEY}))(?:\s[^>]*)?>)[^<]*(?=</(?P=tag)>)", re.I),
        lambda m: m["open"] + REDACTED,
    ),
    # password=x, "password": "x", 'pwd': 'x', api_key: x, Authorization: Basic x, VSPHERE_PASSWORD=x,
    # and JSON escaped inside a string: {\"password\": \"x\"}
    (
        re.compile(rf"(?<![\w.-])(?P<lead>(?:{_KEY})(?:\\?[\"'])?[ \t]*[=:][ \t]*){_VALUE}", re.I),
        lambda m: m["lead"] + _mask_keeping_quotes(m["value"]),
    ),
    # --password x (a command line)
    (
        re.compile(rf"(?<!\S)(?P<lead>--?(?:{_KEY})[ \t]+)(?!-)\S+", re.I),
        lambda m: m["lead"] + REDACTED,
    ),
    # https://user:pw@host — up to the last '@' before the path: a password may hold an '@'.
    # The scheme starts where a scheme can (the lookbehind keeps long words linear to scan).
    (
        re.compile(r"(?<![a-z0-9+.-])(?P<lead>[a-z][a-z0-9+.-]*://[^\s/:@]+:)[^\s/]*(?=@)", re.I),
        lambda m: m["lead"] + REDACTED,
    ),
    # Bearer <token> on its own, outside any header
    (re.compile(r"\b(?P<lead>bearer[ \t]+)[\w.~+/=-]{8,}", re.I), lambda m: m["lead"] + REDACTED),
)


def _mask_keeping_quotes(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[0] + REDACTED + value[0]
    return REDACTED


def redact_text(text: str) -> str:
    """`text` with every password, token, cookie and URL credential it carries replaced."""
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no password, cookie or token leaves in a log event.

    An exception still attached (`exc_info`) is formatted into text here, so
    that it is scrubbed too: a renderer after this processor would print the
    traceback, and the password in its message or source lines, untouched.
    """
    if event.get("exc_info"):
        event = structlog.processors.format_exc_info(logger, method, event)
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
    """Set up structlog for an application: console or JSON lines on stderr.

    Tracebacks are turned into data (JSON) or text (console) before
    `redact_secrets`, without the frames' local variables: a local holding a
    password under an innocent name could not be recognised.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    tracebacks: Any = (
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        if json
        else structlog.processors.format_exc_info
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            tracebacks,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


class Logger(Protocol):
    """What the library calls on the logger `get_logger` returns.

    Both loggers it can hand out are one, which mypy checks: structlog's
    `stdlib.BoundLogger` (an unconfigured application) and the
    `FilteringBoundLogger` that `configure_logging` (or an application's own
    `make_filtering_bound_logger`) makes.
    """

    def bind(self, **new_values: Any) -> Logger: ...
    def debug(self, event: str, *args: Any, **kw: Any) -> Any: ...
    def info(self, event: str, *args: Any, **kw: Any) -> Any: ...
    def warning(self, event: str, *args: Any, **kw: Any) -> Any: ...
    def error(self, event: str, *args: Any, **kw: Any) -> Any: ...
    def exception(self, event: str, *args: Any, **kw: Any) -> Any: ...


if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    # mypy proves both structlog loggers get_logger hands out are a Logger

    def _both_are_loggers(a: structlog.stdlib.BoundLogger, b: FilteringBoundLogger) -> tuple[Logger, Logger]:
        return a, b


def get_logger(**context: Any) -> Logger:
    """A logger with `context` (vm, disk, operation, …) bound to every event.

    When the application configured structlog, its processors apply, with
    `redact_secrets` first unless the chain already has it; otherwise events go to the standard `logging`
    logger "vsphere_replicator", so an unconfigured application sees only
    warnings, on stderr, as Python's logging does by default.
    """
    if structlog.is_configured():
        config = structlog.get_config()
        processors = config["processors"]
        if redact_secrets not in processors:  # a chain that has it (configure_logging's) placed it
            processors = [redact_secrets, *processors]
        # the application's wrapper_class: configure_logging's FilteringBoundLogger, or its own
        configured: Logger = structlog.wrap_logger(
            config["logger_factory"](),
            processors=processors,
            wrapper_class=config["wrapper_class"],
            context_class=config["context_class"],
            cache_logger_on_first_use=False,
        )
        return configured.bind(**context)
    plain: structlog.stdlib.BoundLogger = structlog.wrap_logger(
        logging.getLogger("vsphere_replicator"),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.processors.format_exc_info,
            redact_secrets,
            structlog.processors.KeyValueRenderer(key_order=["event"]),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    return plain.bind(**context)
