"""SPICE numbers: parse values with scale suffixes (1k, 10u, 1meg, 2.2n) and format floats
so that text -> float -> text is stable."""
from __future__ import annotations

import math
import re
from decimal import Decimal

_DECADES = {"t": 12, "g": 9, "meg": 6, "k": 3, "m": -3, "u": -6, "n": -9, "p": -12, "f": -15, "a": -18}
_MIL = 25.4e-6  # m: one thousandth of an inch
_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)(meg|mil|[tgkmunpfa])?([a-z]*)$", re.IGNORECASE)


def parse_value(token: str) -> float:
    """A SPICE number: optional scale suffix, then any unit letters, which SPICE ignores
    (``10kohm`` = 1e4, ``4pF`` = 4e-12). Decimal scale factors shift the exponent exactly, so
    ``100u`` is the double nearest 1e-4. Raises ValueError for anything else, e.g. expressions."""
    m = _NUMBER.match(token.strip())
    if not m:
        raise ValueError(f"not a SPICE number: {token!r}")
    suffix = (m.group(2) or "").lower()
    if suffix == "mil":
        value = float(m.group(1)) * _MIL
    else:
        value = float(Decimal(m.group(1)).scaleb(_DECADES.get(suffix, 0)))
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {token!r}")
    return value


def format_value(x: float) -> str:
    """15 significant digits: exact enough for 1 nV agreement, and stable under 1/(1/x)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"cannot write non-finite value {x} to a deck")
    return format(x, ".15g")
