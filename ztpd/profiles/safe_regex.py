"""Regular expressions that cannot backtrack catastrophically.

Python's ``re`` has no time limit, so a pattern such as ``(a+)+$`` can hang matching for
minutes on a 30-character string. Patterns are therefore checked when profiles load and refused
when they contain the shapes that cause exponential backtracking: a variable repeat inside
another repeat, an alternation inside a repeat, or a backreference. The
remaining patterns are at worst polynomial, and the text they run on is bounded by
``MAX_SUBJECT``.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

MAX_PATTERN = 512
MAX_SUBJECT = 4096

# The parser behind re.compile; it has no public name and no type stubs.
_parser: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")
_REPEATS = {_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT}


class UnsafeRegex(ValueError):
    pass


def _check(items: Any, in_repeat: bool) -> None:
    for op, arg in items:
        if op in _REPEATS:
            low, high, body = arg
            variable = low != high and op != _c.POSSESSIVE_REPEAT
            if variable and in_repeat:
                raise UnsafeRegex(
                    "a variable repeat inside another repeat, such as (a+)+ or "
                    "(a{1,5})*, can backtrack catastrophically; remove one of them"
                )
            _check(body, in_repeat or (variable and high > 1))
        elif op == _c.SUBPATTERN:
            _check(arg[-1], in_repeat)
        elif op == _c.BRANCH:
            if in_repeat:
                raise UnsafeRegex(
                    "an alternation inside a repeat, such as (a|ab)*, can "
                    "backtrack catastrophically; use a character class or "
                    "move the alternation out of the repeat"
                )
            for branch in arg[1]:
                _check(branch, in_repeat)
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            _check(arg[1], in_repeat)
        elif op in (_c.GROUPREF, _c.GROUPREF_EXISTS):
            raise UnsafeRegex("backreferences are not supported")
        elif op == _c.ATOMIC_GROUP:
            _check(arg, False)


def compile_safe(pattern: str) -> re.Pattern[str]:
    """Compile ``pattern`` or raise ValueError saying what is wrong with it."""
    if len(pattern) > MAX_PATTERN:
        raise UnsafeRegex(f"pattern is longer than {MAX_PATTERN} characters")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise UnsafeRegex(f"bad regex {pattern!r}: {e}") from None
    _check(_parser.parse(pattern), False)
    return compiled
