"""SPICE numbers: parse values with scale suffixes (1k, 10u, 1meg, 2.2n) and format floats
so that text -> float -> text is stable."""
from __future__ import annotations

import math
import re

_SCALE = {"t": 1e12, "g": 1e9, "meg": 1e6, "k": 1e3, "mil": 25.4e-6, "m": 1e-3,
          "u": 1e-6, "n": 1e-9, "p": 1e-12, "f": 1e-15, "a": 1e-18}
_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)(meg|mil|[tgkmunpfa])?([a-z]*)$", re.IGNORECASE)


def parse_value(token: str) -> float:
    """A SPICE number: optional scale suffix, then any unit letters, which SPICE ignores
    (``10kohm`` = 1e4). Raises ValueError for anything else, e.g. expressions."""
    m = _NUMBER.match(token.strip())
    if not m:
        raise ValueError(f"not a SPICE number: {token!r}")
    value = float(m.group(1)) * _SCALE.get((m.group(2) or "").lower(), 1.0)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {token!r}")
    return value


def format_value(x: float) -> str:
    """15 significant digits: exact enough for 1 nV agreement, and stable under 1/(1/x)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"cannot write non-finite value {x} to a deck")
    return format(x, ".15g")
