"""Connection strings: masking credentials wherever a DSN could be shown.

Both libpq forms are handled: URLs (``postgresql://user:secret@host/db``) and key/value strings
(``host=h password=secret dbname=d``). ``redact`` masks every DSN-like credential inside free text
(error messages, log lines), ``MaskingFilter`` applies it to every log record.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://user:password@host  -> scheme://user:***@host; the password runs to the authority's last '@'
_URL_USERINFO = re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<rest>\S*)")
# password=secret / password='sec ret'
_KV_PASSWORD = re.compile(r"(?P<pre>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s]+)", re.IGNORECASE)
# ?password=secret&...  in URL query strings
_QUERY_PASSWORD = re.compile(r"(?P<pre>[?&]password=)(?P<pw>[^&\s]+)", re.IGNORECASE)


def _password_end(rest: str) -> int | None:
    """Index of the '@' that ends the password in ``rest`` (what follows ``scheme://user:``): the last
    '@' of the authority. A password may hold unescaped '@', '/', ':' (libpq would choke on some, an
    error message would still print them), so the authority is taken to run until a '?' or '#' that
    follows an '@'; when in doubt more is masked, never less."""
    cut = None
    for i, ch in enumerate(rest):
        if ch == "@":
            cut = i
        elif ch in "?#" and cut is not None:
            break
    return cut


def _mask_userinfo(m: re.Match) -> str:
    rest = m["rest"]
    cut = _password_end(rest)
    if cut is None:  # no credentials (scheme://host:port/...)
        return m.group(0)
    return f"{m['pre']}{MASK}{rest[cut:]}"


def redact(text: str) -> str:
    """Return ``text`` with every password of every DSN in it replaced by ``***``."""
    if not text:
        return text
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    text = _QUERY_PASSWORD.sub(lambda m: f"{m['pre']}{MASK}", text)
    text = _KV_PASSWORD.sub(lambda m: f"{m['pre']}{MASK}", text)
    return text


def mask_dsn(dsn: str | None) -> str:
    """The DSN as it may be shown: password replaced by ``***``."""
    return redact(dsn or "")


class MaskingFilter(logging.Filter):
    """A logging filter that redacts credentials from every record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record must still be logged
            return True
        masked = redact(message)
        if masked != message or record.args:
            record.msg = masked
            record.args = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_masking(logger: logging.Logger | None = None) -> None:
    """Attach the masking filter to every handler of ``logger`` (root by default), once."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
