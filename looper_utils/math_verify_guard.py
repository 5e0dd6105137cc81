r"""The guarded Math-Verify path: which ``\boxed{}`` LaTeX it may read, and the call under a time budget.

``answers`` reads plain numbers itself; only the content of a last
``\boxed{}`` that its reader cannot parse (``2\frac{1}{2}``, ``\sqrt{49}``,
``3 \times 4``) comes here. Math-Verify is never shown text that could stand
for several values, or for none, nor anything whose evaluation could hang:

- ``plain_arithmetic`` admits only short plain arithmetic: at most
  ``_MV_MAX_CHARS`` = 64 characters of digits, ``+ - * / ^ ( ) { }``,
  ``\frac``, ``\sqrt``, ``\times``, ``\cdot``, ``\div``, ``\left( \right)`` and
  spacing, nested at most ``_MV_MAX_DEPTH`` = 4 deep, with at most one power,
  whose exponent is a literal integer up to 64 (so ``9^{9^{9^{9}}}`` is never
  evaluated). Anything else (``\lor``, ``\vee``, ``\cup``, ``\max``, sets
  ``\{...\}``, commas other than ``1{,}000``, ``\quad``, ``\\``, letters,
  numbers side by side) has no answer.
- ``math_verify_value`` runs Math-Verify with its own ``parsing_timeout`` of
  ``TIME_BUDGET_S`` = 1 second (its timeout is a ``SIGALRM``, whole seconds,
  main thread only: in other threads it runs without one, bounded by the
  checks above), and not at all once the caller's budget is spent. An alarm
  set by the caller (pytest-timeout, a notebook's own) is re-armed afterwards.
"""
from __future__ import annotations

import math
import os
import re
import signal
import threading
import time
from fractions import Fraction

__all__ = ["TIME_BUDGET_S", "plain_arithmetic", "math_verify_value"]

TIME_BUDGET_S = 1  # seconds per call: Math-Verify's parsing_timeout, and no Math-Verify once spent
_MV_MAX_CHARS = 64  # longer \boxed{} contents are not handed to Math-Verify
_MV_MAX_DEPTH = 4  # nor are contents nested deeper than this ({ and ( together)
_MAX_EXPONENT = 64  # nor powers other than one literal integer exponent up to this (as regime_w.safe_eval)

# what Math-Verify may see: plain arithmetic LaTeX, one token at a time
_MV_VOCABULARY = re.compile(r"(?:(?<=\d)\{,\}(?=\d)|[\d.+\-*/()^{} \t]"
                            r"|\\(?:[dtc]?frac|sqrt|times|cdot|div|left(?=\()|right(?=\))|circ)(?![A-Za-z])"
                            r"|\\[,!;: ])*+")
# ... and not: numbers side by side ("5 7", "5 . 7", "5\quad 7" is refused above), a number with two points
# ("1..2"), an empty group, a dangling operator (checked with LaTeX spacing commands read as blanks)
_MV_MALFORMED = re.compile(r"[\d.]\s++[\d.]|\.\d*+\.|[{(]\s*+[})]"
                           r"|(?:[-+*/^]|\\(?:times|cdot|div|frac|dfrac|tfrac|cfrac|sqrt|left|right))\s*+$")
_TEX_SPACING = re.compile(r"\\[,!;: ]")
_MV_POWER = re.compile(r"\^(?:\{\s*+(-?\d{1,2})\s*+\}|(\d)(?![\d.])|\{?\s*+\\circ\s*+\}?)")


def plain_arithmetic(s: str) -> bool:
    r"""Whether ``s`` is short, single-valued arithmetic LaTeX that Math-Verify may evaluate.

    >>> [plain_arithmetic(s) for s in (r"2\frac{1}{2}", r"\sqrt{49}", r"2^{10}", r"3 \times 4")]
    [True, True, True, True]
    >>> [plain_arithmetic(s) for s in (r"5 \lor 7", r"\{5, 7\}", r"\max(5, 7)", "5 . 7", r"9^{9^{9}}", "2^{99}")]
    [False, False, False, False, False, False]
    """
    if not s or len(s) > _MV_MAX_CHARS or not _MV_VOCABULARY.fullmatch(s) \
            or _MV_MALFORMED.search(_TEX_SPACING.sub(" ", s)):
        return False
    depth = 0
    for ch in s:
        if ch in "{(":
            depth += 1
            if depth > _MV_MAX_DEPTH:
                return False
        elif ch in "})":
            depth -= 1
            if depth < 0:
                return False
    if depth:
        return False
    powers = list(_MV_POWER.finditer(s))
    if len(powers) != s.count("^"):
        return False  # a power whose exponent is not a literal: 9^{9^9}, 2^{x}
    exponents = [int(m.group(1) or m.group(2)) for m in powers if m.group(1) or m.group(2)]
    return len(exponents) <= 1 and all(abs(e) <= _MAX_EXPONENT for e in exponents)


def math_verify_value(s: str, deadline: float) -> Fraction | None:
    """Math-Verify's reading of ``s`` as one finite number, or None (also once ``deadline`` has passed).

    ``s`` should have passed ``plain_arithmetic``; ``deadline`` is a
    ``time.perf_counter()`` reading, the end of the caller's time budget.
    The value is the nearest fraction with a denominator up to 10**9.
    """
    try:  # Math-Verify reads the LaTeX we do not; only a single plain number is accepted
        from math_verify import parse
        from math_verify.errors import TimeoutException
    except ImportError:
        return None
    if time.perf_counter() >= deadline:
        return None
    # its timeout is a SIGALRM: only in the main thread, in whole seconds; elsewhere s is bounded by
    # plain_arithmetic (short, shallow, no large powers) and runs in about a millisecond
    main = os.name == "posix" and threading.current_thread() is threading.main_thread()
    outer = signal.getitimer(signal.ITIMER_REAL) if main else (0.0, 0.0)
    t0 = time.perf_counter()
    try:
        parsed = parse("$" + s + "$", parsing_timeout=max(1, math.ceil(TIME_BUDGET_S)) if main else None)
    except (Exception, TimeoutException):  # noqa: BLE001 - any parse failure or timeout means "no number"
        return None
    finally:
        if outer[0] > 0:  # Math-Verify cancels any pending alarm: re-arm the caller's
            signal.setitimer(signal.ITIMER_REAL, max(outer[0] - (time.perf_counter() - t0), 1e-3), outer[1])
    for p in parsed:
        if isinstance(p, str):
            continue  # the raw text Math-Verify falls back to, not a reading
        try:
            value = float(p)
            if math.isfinite(value):
                return Fraction(str(value)).limit_denominator(10**9)
        except (TypeError, ValueError, ArithmeticError):
            continue
    return None
