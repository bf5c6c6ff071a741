"""How every `ingest` process writes its log: one line per record on stderr,
safe to read with a terminal and to parse line by line.

Three guarantees, applied where the line is made (the formatter and the
handler), so that no call site can forget them:

- **No control characters from the outside.** Request paths, headers and
  credential scopes reach log messages as arguments; an ESC sequence or a
  CR/LF in them could repaint a terminal or forge a whole record ("stopped
  cleanly"). Every control character of a message (C0, DEL, C1 and the
  Unicode line separators) is written as a ``\\xNN`` / ``\\uNNNN`` escape, so
  a record's message is always one line. Exception and stack text keeps its
  line breaks but each continuation line is indented: only a record's first
  line starts at column 0, with a timestamp.
- **Secrets in URLs are redacted**: the password of a URL's userinfo and every
  query value (``postgresql://u:p@h/db?password=x`` is written
  ``postgresql://u:***@h/db?password=***``).
- **Repeated warnings are rate-limited** per (logger, message template): a
  burst of one warning (3,000 malformed requests) writes a few lines, then one
  line with the count of those left out, when the next record passes after
  the window or at exit.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROCESS_NAME = re.compile("[a-z0-9-]{1,32}")

# Per (logger, template), records at WARNING and above pass freely up to
# REPEAT_BURST in each REPEAT_WINDOW_S; the rest are counted. Ten seconds is
# short enough that an operator sees a new failure promptly and long enough
# that a flood of one warning costs a handful of lines per window.
REPEAT_WINDOW_S = 10.0
REPEAT_BURST = 5
# Templates are code constants, so the table stays small; the bound is for a
# call site that formats its own message (an f-string) from client text.
MAX_TEMPLATES = 1024

# C0 controls, DEL, C1 controls (0x9b is a one-byte CSI to some terminals),
# and the characters Unicode and some log viewers treat as line breaks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# scheme://netloc[path][?query]: netloc and path as urllib.parse.urlsplit
# reads them; a URL ends at whitespace, a quote, an angle bracket or a
# control character.
_URL = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
    r"(?P<netloc>[^\s/?#'\"<>\x00-\x1f\x7f]*)"
    r"(?P<path>[^\s?#'\"<>\x00-\x1f\x7f]*)"
    r"(?:\?(?P<query>[^\s#'\"<>\x00-\x1f\x7f]*))?"
)
REDACTED = "***"
_TRAILING = ".,;:!)]}"


def escaped(text: str) -> str:
    """``text`` with every control character written as an escape: one line."""
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def redacted(text: str) -> str:
    """``text`` with every URL's userinfo password and query values replaced by ``***``."""
    return _URL.sub(_redact_one, text)


def _redact_one(match: re.Match[str]) -> str:
    netloc = match["netloc"]
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{host}"
    url = f"{match['scheme']}{netloc}{match['path']}"
    query = match["query"]
    if query is not None:
        # Punctuation that ends a sentence ends the URL too ("…?password=x, ready").
        kept = query.rstrip(_TRAILING)
        parameters = "&".join(_redact_parameter(p) for p in kept.split("&"))
        url += f"?{parameters}{query[len(kept) :]}"
    return url


def _redact_parameter(parameter: str) -> str:
    if not parameter:
        return parameter
    name, eq, _ = parameter.partition("=")
    # A bare ?token is a value without a name.
    return f"{name}={REDACTED}" if eq else REDACTED


def redacted_url(url: str | None) -> str | None:
    """A URL (a store's, a broker's) fit for a log, or None."""
    return None if url is None else redacted(url)


class SafeFormatter(logging.Formatter):
    """A formatter whose every line is redacted and free of control characters
    (the module's contract). Suppression counts from :class:`RepeatFilter` are
    appended to the message."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message += getattr(record, SUPPRESSED, "")
        return escaped(redacted(super().formatMessage(record)))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return _continuation(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _continuation(super().formatStack(stack_info))


def _continuation(text: str) -> str:
    """Multi-line text (a traceback) as continuation lines: each escaped and
    indented, so that none can pass for a record of its own."""
    return "\n".join("  " + escaped(redacted(line)) for line in text.splitlines())


# The LogRecord attribute the filter sets on a report (the note of how many
# more were left out) and the formatter appends to its message.
SUPPRESSED = "ingest_suppressed"


class _Window:
    __slots__ = ("last", "passed", "started", "suppressed")

    def __init__(self, started: float) -> None:
        self.started = started
        self.passed = 0
        self.suppressed = 0
        self.last: logging.LogRecord | None = None


class RepeatFilter(logging.Filter):
    """Lets through at most ``burst`` records at WARNING and above per
    (logger, message template) in each ``window_s``; counts the rest.

    A window that left records out is reported by :meth:`due` once it has
    ended: the last record left out, carrying the count of the others
    (:data:`SUPPRESSED`): "… (and 2,999 more like it in the last 10 s)".
    The handler writes those before each record it handles and when it
    closes, so a count is never lost, only late.
    """

    def __init__(
        self,
        *,
        window_s: float = REPEAT_WINDOW_S,
        burst: int = REPEAT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._window_s = window_s
        self._burst = burst
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._reports: list[logging.LogRecord] = []
        # Records come from any thread (aiokafka's, asyncio's executor).
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or getattr(record, SUPPRESSED, None) is not None:
            return True
        with self._lock:
            return self._admit(record)

    def _admit(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.started >= self._window_s:
            self._close(key, window)
            window = None
        if window is None:
            if len(self._windows) >= MAX_TEMPLATES:
                self._evict(now)
            window = self._windows[key] = _Window(now)
        if window.passed < self._burst:
            window.passed += 1
            return True
        window.suppressed += 1
        window.last = record
        return False

    def due(self, *, closing: bool = False) -> list[logging.LogRecord]:
        """The reports of windows that ended (all of them when ``closing``)."""
        with self._lock:
            now = self._clock()
            for key, window in list(self._windows.items()):
                if closing or now - window.started >= self._window_s:
                    self._close(key, window)
            reports, self._reports = self._reports, []
        return reports

    def _close(self, key: tuple[str, str], window: _Window) -> None:
        del self._windows[key]
        if window.last is not None:
            more = window.suppressed - 1
            note = f" (and {more:,} more like it in the last {self._window_s:g} s)" if more else ""
            setattr(window.last, SUPPRESSED, note)
            self._reports.append(window.last)

    def _evict(self, now: float) -> None:
        """Room for one more template: ended windows go first, then the oldest."""
        for key, window in list(self._windows.items()):
            if now - window.started >= self._window_s:
                self._close(key, window)
        while len(self._windows) >= MAX_TEMPLATES:
            key = next(iter(self._windows))
            self._close(key, self._windows[key])


class SafeHandler(logging.StreamHandler[TextIO]):
    """stderr through :class:`SafeFormatter` and :class:`RepeatFilter`,
    writing the filter's suppression reports as they fall due."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        repeats: RepeatFilter | None = None,
        process: str | None = None,
    ) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.repeats = repeats if repeats is not None else RepeatFilter()
        self.addFilter(self.repeats)
        self.setFormatter(SafeFormatter(FORMAT if process is None else process_format(process)))

    def handle(self, record: logging.LogRecord) -> bool:
        for report in self.repeats.due():
            super().handle(report)
        return super().handle(record)

    def close(self) -> None:
        for report in self.repeats.due(closing=True):
            super().handle(report)
        super().close()


def process_format(process: str) -> str:
    """FORMAT with ``[process]`` after the level: the lines of the processes
    `ingest run` supervises share its stderr, and say which one wrote them.
    ``process`` is a supervisor's role name (PROCESS_NAME), never client text."""
    if PROCESS_NAME.fullmatch(process) is None:
        raise ValueError(f"a process name is 1-32 of a-z, 0-9 and '-', not {process!r}")
    return FORMAT.replace("%(levelname)s ", f"%(levelname)s [{process}] ", 1)


def configure(level: str, *, process: str | None = None) -> None:
    """The root logger writes through one :class:`SafeHandler` at ``level``
    (what `logging.basicConfig` did, with this module's guarantees); with
    ``process``, each line names it (:func:`process_format`)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(SafeHandler(process=process))
    root.setLevel(level)
