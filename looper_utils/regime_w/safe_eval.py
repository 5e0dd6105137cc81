"""A safe arithmetic evaluator for the calculator steps that solutions write.

Model completions are untrusted text, and the reward recomputes every
``<<48/2=24>>`` annotation and inline ``48 / 2 = 24`` step it finds, so the
evaluator must never run code. It parses with :mod:`ast` and walks a
whitelist: numbers written as plain decimals, ``+ - * / **``, unary signs and
parentheses. Names, calls, attributes, subscripts, comparisons, strings,
scientific notation, hexadecimal, octal and binary literals (``0x1F``,
``0o7``, ``0b101``: Python reads them, a solution never means them) and every
other node are refused, as are exponents beyond :data:`MAX_EXPONENT`
(``9**9**9`` would otherwise hang the scorer), over-long expressions,
division by zero and results that are not finite real numbers. ``eval`` is
never called.

Python's own ``ast.literal_eval`` is not enough here: it rejects ``*``, ``/``
and ``**`` (it only folds ``+``/``-`` for complex literals).
"""
from __future__ import annotations

import ast
import math
import re

from ..answers import cache_short_strings

__all__ = ["safe_eval", "try_eval", "UnsafeExpression", "MAX_EXPONENT", "MAX_LENGTH"]

MAX_EXPONENT = 64  # |exponent| above this is refused: no GSM8K step needs more
MAX_LENGTH = 200  # characters; longer "steps" are prose or an attack, not arithmetic
_MAX_MAGNITUDE = 1e30  # intermediate results beyond this are refused (overflow games)
# A literal that is not a plain decimal: scientific notation, complex, digit separators, and the
# hexadecimal, octal and binary prefixes (in an expression that parses, a digit is followed by a
# letter only inside a literal).
_ODD_LITERAL = re.compile(r"\d[eEjJ_xXoObB]|\.[eEjJ]|[eE][+-]?\d*[jJ]")

_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
_BINOPS_BY_SYMBOL = {"+": _BINOPS[ast.Add], "-": _BINOPS[ast.Sub], "*": _BINOPS[ast.Mult], "/": _BINOPS[ast.Div]}
# two plain decimals (no leading zeros, as Python's grammar) and one operator
_DECIMAL = r"((?:0|[1-9]\d*)(?:\.\d*)?|\.\d+)"
_SIMPLE = re.compile(rf"\s*{_DECIMAL}\s*([-+*/])\s*{_DECIMAL}\s*")


class UnsafeExpression(ValueError):
    """The text is not plain arithmetic (or its value is unusable); the message says why."""


def safe_eval(expr: str) -> float:
    """The value of a plain arithmetic expression, computed without ``eval``.

    >>> safe_eval("48/2")
    24.0
    >>> safe_eval("(3 + 4) * 2 - 1.5")
    12.5
    >>> safe_eval("2**10")
    1024.0
    >>> safe_eval("-(2.5 - .5)")
    -2.0
    >>> safe_eval("0x1F")
    Traceback (most recent call last):
    ...
    looper_utils.regime_w.safe_eval.UnsafeExpression: only plain decimal numbers are allowed in '0x1F'
    >>> safe_eval("open(1)")
    Traceback (most recent call last):
    ...
    looper_utils.regime_w.safe_eval.UnsafeExpression: calls are not allowed in 'open(1)'
    >>> safe_eval("9**9**9")
    Traceback (most recent call last):
    ...
    looper_utils.regime_w.safe_eval.UnsafeExpression: exponent 387420489 is larger than 64 in '9**9**9'
    """
    if not isinstance(expr, str):
        raise UnsafeExpression(f"expected a string, got {type(expr).__name__}")
    if len(expr) > MAX_LENGTH:
        raise UnsafeExpression(f"expression longer than {MAX_LENGTH} characters")
    simple = _SIMPLE.fullmatch(expr)
    if simple:  # "48/2": most steps are one operation on two numbers; skip the parser
        a, op, b = float(simple[1]), simple[2], float(simple[3])
        if op == "/" and b == 0:
            raise UnsafeExpression(f"division by zero in {expr!r}")
        return _check(_BINOPS_BY_SYMBOL[op](a, b), expr)
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise UnsafeExpression(f"not an arithmetic expression: {expr!r}") from None
    value = _eval(tree.body, expr)
    if _ODD_LITERAL.search(expr):
        # checked after the walk so that names like `e` get the clearer message above
        raise UnsafeExpression(f"only plain decimal numbers are allowed in {expr!r}")
    return value


def try_eval(expr: str) -> float | None:
    """``safe_eval`` that answers None instead of raising (for scanning text).

    >>> try_eval("12/60"), try_eval("x*2"), try_eval("1/0")
    (0.2, None, None)
    """
    return _try_eval_cached(expr)


@cache_short_strings  # the samples of one problem repeat the same calculator steps
def _try_eval_cached(expr: str) -> float | None:
    try:
        return safe_eval(expr)
    except UnsafeExpression:
        return None


def _eval(node: ast.AST, src: str) -> float:
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UnsafeExpression(f"only numbers are allowed, found {v!r} in {src!r}")
        return _check(float(v), src)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval(node.operand, src)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a = _eval(node.left, src)
        b = _eval(node.right, src)
        if isinstance(node.op, ast.Pow):
            return _check(_power(a, b, src), src)
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise UnsafeExpression(f"operator {type(node.op).__name__} is not allowed in {src!r} "
                                   "(only + - * / ** and parentheses)")
        if isinstance(node.op, ast.Div) and b == 0:
            raise UnsafeExpression(f"division by zero in {src!r}")
        return _check(op(a, b), src)
    raise UnsafeExpression(f"{_describe(node)} not allowed in {src!r}")


def _power(a: float, b: float, src: str) -> float:
    if abs(b) > MAX_EXPONENT:
        shown = int(b) if float(b).is_integer() else b
        raise UnsafeExpression(f"exponent {shown} is larger than {MAX_EXPONENT} in {src!r}")
    if a == 0 and b < 0:
        raise UnsafeExpression(f"division by zero in {src!r}")
    if a < 0 and not float(b).is_integer():
        raise UnsafeExpression(f"a negative number to a fractional power is not real in {src!r}")
    try:
        return a ** b
    except OverflowError:
        raise UnsafeExpression(f"result too large in {src!r}") from None


def _check(v: float, src: str) -> float:
    if not math.isfinite(v) or abs(v) > _MAX_MAGNITUDE:
        raise UnsafeExpression(f"result too large in {src!r}")
    return v


def _describe(node: ast.AST) -> str:
    kinds = {ast.Name: "names are", ast.Call: "calls are", ast.Attribute: "attributes are",
             ast.Subscript: "subscripts are", ast.Compare: "comparisons are", ast.Lambda: "lambdas are"}
    for cls, text in kinds.items():
        if isinstance(node, cls):
            return text
    return f"{type(node).__name__} is"
