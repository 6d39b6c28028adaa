"""Validated import of SPICE decks into the Circuit IR.

Accepts only the subset the IR can represent exactly: R, V, I, D, the E + sense-V + F triple
of a bidirectional amplifier, ``.model D``, ``.options``, ``.op``, ``.end``, comments, ``+``
continuations and SI suffixes. Everything else is refused with its line number and a reason
-- above all ``.control`` blocks and ``shell``, since ngspice's control language can run shell
commands: a deck read from a user is rebuilt from the IR before ngspice ever sees it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..circuit.ir import (
    GROUND,
    _NODE_NAME,
    Amplifiers,
    Circuit,
    CircuitError,
    Conductances,
    CurrentSources,
    Diodes,
    Nudges,
    Role,
    VoltageSources,
)
from .netlist import DERIVED_META, inferred_roles
from .units import parse_value

OPTION_KEYS = {"reltol", "abstol", "vntol", "gmin", "itl1", "itl2", "gminsteps", "srcsteps", "pivtol", "pivrel"}
DIODE_PARAMS = {"is": "IS", "n": "N", "rs": "RS"}
_DIODE_DEFAULTS = {"IS": 1e-14, "N": 1.0, "RS": 0.0}  # SPICE's defaults
_KIND_LETTER = {"conductances": "r", "nudges": "r", "sources": "v", "currents": "i", "diodes": "d", "amplifiers": "e"}
_REFUSED_DIRECTIVES = {
    ".control": ".control blocks are refused: ngspice's control language can run shell commands",
    ".endc": ".endc (end of a .control block) is refused: control blocks are not accepted",
    ".include": ".include is refused: decks must be self-contained (no file access)",
    ".inc": ".inc is refused: decks must be self-contained (no file access)",
    ".lib": ".lib is refused: decks must be self-contained (no file access)",
    ".param": ".param is refused: parameters and expressions are not supported, write numbers",
    ".subckt": ".subckt is refused: flatten subcircuits first",
    ".tran": "only DC operating-point decks are supported (.op), not .tran",
    ".dc": "only DC operating-point decks are supported (.op), not .dc",
    ".ac": "only DC operating-point decks are supported (.op), not .ac",
    ".func": ".func is refused: expressions are not supported",
    ".csparam": ".csparam is refused: it passes values into the control language",
    ".exec": ".exec is refused: it runs control-language commands",
}
_META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class NetlistError(ValueError):
    """A deck line that cannot be accepted, with where and why."""

    def __init__(self, reason: str, line: int | None = None, source: str = "<deck>"):
        self.reason, self.line, self.source = reason, line, source
        super().__init__(f"{source}:{line}: {reason}" if line is not None else f"{source}: {reason}")


@dataclass
class _Elem:
    letter: str
    name: str
    nodes: list[str]
    value: float | str | None
    line: int
    group: tuple[str, str, bool] | None  # (kind, name, ideal) from "*@ group"


@dataclass
class _Deck:
    title: str = ""
    meta: dict = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    model_spelling: dict[str, str] = field(default_factory=dict)
    elems: list[_Elem] = field(default_factory=list)


def _logical_lines(text: str, fail) -> list[tuple[int, str]]:
    """Join ``+`` continuations and strip inline comments; keeps the first line number."""
    out: list[tuple[int, str]] = []
    for no, raw in enumerate(text.splitlines()[1:], start=2):
        if any(ord(ch) < 32 and ch != "\t" for ch in raw):
            fail("control characters are not allowed", no)
        line = raw.strip()
        if not line.startswith("*"):
            line = re.split(r";|\s\$\s|\s\$$", line)[0].strip()
        if not line:
            continue
        if line.startswith("+"):
            if not out or out[-1][1].startswith("*"):
                fail("continuation line '+' with nothing to continue", no)
            out[-1] = (out[-1][0], out[-1][1] + " " + line[1:].strip())
        else:
            out.append((no, line))
    return out


def _node(token: str, no: int, fail) -> str:
    if not _NODE_NAME.match(token):
        fail(f"node name {token!r}: only letters, digits and '_' are accepted", no)
    return GROUND if token.lower() in ("0", "gnd") else token


def _number(token: str, no: int, fail, what: str) -> float:
    try:
        return parse_value(token)
    except ValueError as e:
        fail(f"{what}: {e}", no)


def _scan(text: str, fail) -> _Deck:
    deck = _Deck()
    first = text.splitlines()[0] if text.strip() else ""
    deck.title = first.lstrip("*").strip()
    group: tuple[str, str, bool] | None = None
    in_header, ended = True, False
    names_seen: dict[str, int] = {}
    for no, line in _logical_lines(text, fail):
        low = line.lower()
        if line.startswith("*"):
            body = line[1:].strip()
            if body.startswith("@"):
                parts = body[1:].split()
                if parts[:1] == ["group"] and len(parts) in (3, 4) and parts[1] in _KIND_LETTER:
                    if len(parts) == 4 and (parts[3] != "ideal" or parts[1] != "diodes"):
                        fail(f"unknown group flag {parts[3]!r}", no)
                    group = (parts[1], parts[2], len(parts) == 4)
                elif parts[:1] == ["role"] and len(parts) >= 3:
                    try:
                        role = Role(parts[1])
                    except ValueError:
                        fail(f"unknown role {parts[1]!r}", no)
                    for name in parts[2:]:
                        deck.roles[_node(name, no, fail).lower()] = role
                else:
                    fail(f"malformed analog-ep annotation {line!r}", no)
            elif in_header and ":" in body:
                key, _, value = body.partition(":")
                if _META_KEY.match(key.strip()) and key.strip() not in DERIVED_META:
                    deck.meta[key.strip()] = value.strip()
            continue
        if ended:
            fail("nothing may follow .end", no)
        in_header = False
        tokens = re.sub(r"\s*=\s*", "=", line).split()
        head = tokens[0].lower()
        if head in _REFUSED_DIRECTIVES:
            fail(_REFUSED_DIRECTIVES[head], no)
        if head == "shell" or head.startswith("shell"):
            fail("'shell' is refused: decks may not run commands", no)
        if head.startswith("."):
            if head in (".options", ".option", ".opt"):
                for tok in tokens[1:]:
                    key, eq, value = tok.partition("=")
                    if not eq or key.lower() not in OPTION_KEYS:
                        fail(f"option {tok!r} is not accepted (accepted: {', '.join(sorted(OPTION_KEYS))})", no)
                    _number(value, no, fail, f"option {key}")
                    deck.options[key.lower()] = value
            elif head == ".model":
                toks = re.sub(r"[(),]", " ", " ".join(tokens)).split()
                if len(toks) < 3 or toks[2].lower() != "d":
                    fail("only diode models (.model NAME D(...)) are accepted", no)
                params = dict(_DIODE_DEFAULTS)
                for tok in toks[3:]:
                    key, eq, value = tok.partition("=")
                    if not eq or key.lower() not in DIODE_PARAMS:
                        fail(f"diode parameter {tok!r} is not supported (supported: IS, N, RS)", no)
                    params[DIODE_PARAMS[key.lower()]] = _number(value, no, fail, f"diode parameter {key}")
                if toks[1].lower() in deck.models:
                    fail(f"diode model {toks[1]!r} is defined twice", no)
                deck.models[toks[1].lower()] = params
                deck.model_spelling[toks[1].lower()] = toks[1]
            elif head == ".op":
                pass
            elif head == ".end":
                ended = True
            else:
                fail(f"directive {tokens[0]!r} is not supported", no)
            continue
        letter = head[0]
        arity = {"r": 4, "v": 4, "i": 4, "d": 4, "e": 6, "f": 5}.get(letter)
        if arity is None:
            fail(f"element {tokens[0]!r}: element letter {letter.upper()!r} is not supported (accepted: R, V, I, D, E, F)", no)
        if letter in "vi" and len(tokens) == 5 and tokens[3].lower() == "dc":
            tokens = tokens[:3] + tokens[4:]
        if letter in "vi" and len(tokens) == 3:
            tokens = tokens + ["0"]
        if len(tokens) != arity:
            fail(f"element {tokens[0]!r}: expected {arity - 1} fields after the name, got {len(tokens) - 1}", no)
        if head in names_seen:
            fail(f"element {tokens[0]!r} is already defined on line {names_seen[head]}", no)
        names_seen[head] = no
        if letter == "f":
            nodes = [_node(t, no, fail) for t in tokens[1:3]]
            value: float | str | None = _number(tokens[4], no, fail, "gain")
            nodes.append(tokens[3])  # controlling source name
        elif letter == "d":
            nodes = [_node(t, no, fail) for t in tokens[1:3]]
            value = tokens[3]
        else:
            nodes = [_node(t, no, fail) for t in tokens[1:arity - 1]]
            value = _number(tokens[-1], no, fail, "value")
        elem_group = group if group is not None and _KIND_LETTER[group[0]] == letter else None
        if letter == "r" and value <= 0:
            fail(f"resistor {tokens[0]!r}: resistance must be > 0", no)
        deck.elems.append(_Elem(letter, tokens[0], nodes, value, no, elem_group))
    return deck


def parse_deck(text: str, source: str = "<deck>") -> Circuit:
    """Parse and validate deck text into a Circuit; raises NetlistError on anything refused."""

    def fail(reason: str, line: int | None = None):
        raise NetlistError(reason, line, source)

    if not text.strip():
        fail("empty deck")
    deck = _scan(text, fail)

    # --- amplifiers: E (gain A, out = sense node) + V sense (0 V, sense -> out) + F (gain A on input)
    by_name = {e.name.lower(): e for e in deck.elems}
    consumed: set[int] = set()
    amps: dict[int, tuple[str, str, float]] = {}  # id(E element) -> (name, output node, gain)
    for e in deck.elems:
        if e.letter != "e":
            continue
        sense_node, ref, inp, cref = e.nodes
        if ref != GROUND or cref != GROUND:
            fail(f"E element {e.name!r}: only ground-referenced amplifiers are supported", e.line)
        sense = next((v for v in deck.elems if v.letter == "v" and v.nodes[0].lower() == sense_node.lower()
                      and v.nodes[1] != GROUND), None)
        fsrc = None if sense is None else next(
            (f for f in deck.elems if f.letter == "f" and f.nodes[2].lower() == sense.name.lower()), None)
        if sense is None or fsrc is None or sense.value != 0 or fsrc.nodes[0].lower() != inp.lower() \
                or fsrc.nodes[1] != GROUND or fsrc.value != e.value:
            fail(f"E element {e.name!r}: E/F elements are accepted only as a bidirectional amplifier "
                 f"(E out_s 0 in 0 A; V out_s out 0; F in 0 V A)", e.line)
        users = [x for x in deck.elems if x.letter in "rvid" and x is not sense
                 and sense_node.lower() in (n.lower() for n in x.nodes[:2])]
        if users:
            fail(f"amplifier {e.name!r}: its sense node {sense_node!r} is also used on line {users[0].line}", e.line)
        consumed.update((id(sense), id(fsrc)))
        amps[id(e)] = (e.name[1:], sense.nodes[1], float(e.value))
    for e in deck.elems:
        if e.letter == "f" and id(e) not in consumed:
            fail(f"F element {e.name!r}: accepted only as part of a bidirectional amplifier", e.line)
        if e.letter == "f" and e.nodes[2].lower() not in by_name:
            fail(f"F element {e.name!r}: controlling source {e.nodes[2]!r} is not defined", e.line)

    # --- nodes, in order of first appearance
    spelling: dict[str, str] = {GROUND: GROUND}
    for e in deck.elems:
        if id(e) not in consumed:
            for n in (e.nodes[:2] if e.letter != "e" else [e.nodes[2], amps[id(e)][1]]):
                spelling.setdefault(n.lower(), n)
    names = list(spelling.values())
    index = {n.lower(): i for i, n in enumerate(names)}

    # --- groups, in order of first appearance
    groups: dict[tuple[str, str], dict] = {}

    def slot(kind: str, elem: _Elem) -> dict:
        key = (elem.group[0], elem.group[1]) if elem.group else (kind, {"r": "r", "v": "v", "i": "i", "d": "d", "e": "amp"}[elem.letter])
        ideal = bool(elem.group and elem.group[2])
        return groups.setdefault(key, dict(kind=key[0], name=key[1], ideal=ideal, rows=[]))

    driven: list[int] = []
    for e in deck.elems:
        if id(e) in consumed:
            continue
        if e.letter == "r":
            kind = "nudges" if e.group and e.group[0] == "nudges" else "conductances"
            a, b = index[e.nodes[0].lower()], index[e.nodes[1].lower()]
            if a == b:
                fail(f"resistor {e.name!r} connects a node to itself", e.line)
            slot(kind, e)["rows"].append((e.name, a, b, 1.0 / e.value))
        elif e.letter in "vi":
            p, m = e.nodes[0].lower(), e.nodes[1].lower()
            if (p == GROUND) == (m == GROUND):
                what = "voltage" if e.letter == "v" else "current"
                fail(f"{what} source {e.name!r}: one terminal must be ground (floating sources are not supported)", e.line)
            node = index[m if p == GROUND else p]
            sign = -1.0 if (p == GROUND) == (e.letter == "v") else 1.0
            if e.letter == "v":
                driven.append(node)
            slot("sources" if e.letter == "v" else "currents", e)["rows"].append((e.name, node, sign * e.value))
        elif e.letter == "d":
            model = deck.models.get(e.value.lower())
            if model is None:
                fail(f"diode {e.name!r}: model {e.value!r} is not defined by a .model line", e.line)
            slot("diodes", e)["rows"].append((e.name, index[e.nodes[0].lower()], index[e.nodes[1].lower()],
                                             deck.model_spelling[e.value.lower()], model))
        elif e.letter == "e":
            name, out, gain = amps[id(e)]
            slot("amplifiers", e)["rows"].append((name, index[e.nodes[2].lower()], index[out.lower()], gain))

    elements = []
    for g in groups.values():
        rows, kind, name = g["rows"], g["kind"], g["name"]
        if not rows:
            continue
        cols = list(zip(*rows))
        if kind == "conductances":
            elements.append(Conductances(name, cols[1], cols[2], cols[3], names=cols[0]))
        elif kind == "nudges":
            elements.append(Nudges(name, cols[1], cols[2], cols[3]))
        elif kind == "sources":
            elements.append(VoltageSources(name, cols[1], cols[2], names=cols[0]))
        elif kind == "currents":
            elements.append(CurrentSources(name, cols[1], cols[2], names=cols[0]))
        elif kind == "diodes":
            params = cols[4]
            elements.append(Diodes(name, cols[1], cols[2], [p["IS"] for p in params], [p["N"] for p in params],
                                   [p["RS"] for p in params], ideal=g["ideal"], names=cols[0], models=cols[3]))
        else:
            elements.append(Amplifiers(name, cols[1], cols[2], cols[3], names=cols[0]))

    targets = [int(t) for el in elements if isinstance(el, Nudges) for t in el.target]
    amp_outs = [int(o) for el in elements if isinstance(el, Amplifiers) for o in el.out]
    roles = inferred_roles(len(names), driven, targets, amp_outs)
    for lname, role in deck.roles.items():
        if lname not in index:
            fail(f"role annotation names unknown node {lname!r}")
        roles[index[lname]] = role
    meta = dict(deck.meta)
    if deck.options:
        meta["spice_options"] = deck.options
    try:
        return Circuit(tuple(names), tuple(roles), tuple(elements), title=deck.title or "imported deck", meta=meta)
    except CircuitError as e:
        fail(f"invalid circuit: {e}")


def read_deck(path: str | Path) -> Circuit:
    """Read and validate a deck file (see :func:`parse_deck`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise NetlistError(f"cannot read deck: {e}", None, str(path)) from e
    return parse_deck(text, source=str(path))
