"""Validated import of SPICE decks into the Circuit IR.

Accepts only the subset the IR can represent exactly: R, V, I, D, the E + sense-V + F triple
of a bidirectional amplifier, ``.model D``, ``.options``, ``.op``, ``.end``, comments, ``+``
continuations and SI suffixes. Everything else is refused with its line number and a reason
-- above all ``.control`` blocks and ``shell``, since ngspice's control language can run shell
commands: a deck read from a user is rebuilt from the IR before ngspice ever sees it.

Diode ``.model`` cards are read against ngspice 39's diode parameter list (``DIOmPTable`` in
ngspice's ``src/spicelib/devices/dio/dio.c``): IS, N, RS, BV, IBV set the DC law; parameters
that cannot change the DC operating point (charge storage, noise, temperature coefficients at
TNOM = TEMP = 27 °C, ...) are kept for export and reported by :func:`deck_notes`; parameters
that would change the DC current in a way the emulator does not model are refused by name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator


from ..circuit.builder import DiodeModel
from ..circuit.ir import (
    GROUND,
    NODE_NAME,
    Amplifiers,
    Circuit,
    CircuitError,
    Conductances,
    CurrentSources,
    Diodes,
    Nudges,
    Role,
    VoltageSources,
    is_ground_name,
)
from .netlist import DERIVED_META, inferred_roles
from ..circuit.units import parse_value

OPTION_KEYS = {"reltol", "abstol", "vntol", "gmin", "itl1", "itl2", "gminsteps", "srcsteps", "pivtol", "pivrel"}
DIODE_DC_PARAMS = {"is": "IS", "js": "IS", "n": "N", "rs": "RS", "bv": "BV", "ibv": "IBV", "ib": "IBV"}
"""Card name (and ngspice alias) -> the DC parameter it sets in :class:`~analog_ep.circuit.ir.Diodes`."""
DIODE_NON_DC_PARAMS = {
    # junction and diffusion charge, and the temperature coefficients of the charge model
    "tt": "TT", "ttt1": "TTT1", "ttt2": "TTT2", "cjo": "CJO", "cj0": "CJO", "cj": "CJO", "vj": "VJ", "pb": "VJ",
    "m": "M", "mj": "M", "tm1": "TM1", "tm2": "TM2", "fc": "FC", "cjp": "CJP", "cjsw": "CJP", "php": "PHP",
    "mjsw": "MJSW", "fcs": "FCS", "cta": "CTA", "ctc": "CTA", "ctp": "CTP", "tpb": "TPB", "tvj": "TPB", "tphp": "TPHP",
    # level-3 parasitic metal/poly capacitors
    "lm": "LM", "lp": "LP", "wm": "WM", "wp": "WP", "xom": "XOM", "xoi": "XOI", "xm": "XM", "xp": "XP",
    # temperature dependence: no effect while the circuit runs at TNOM (27 °C, see DIODE_DC_INERT_AT)
    "tnom": "TNOM", "tref": "TNOM", "eg": "EG", "xti": "XTI", "trs": "TRS", "trs1": "TRS", "trs2": "TRS2",
    "tcv": "TCV", "tlev": "TLEV", "tlevc": "TLEVC",
    # noise, safe-operating-area warnings, self-heating (off without the instance's 'thermal' flag)
    "kf": "KF", "af": "AF", "fv_max": "FV_MAX", "bv_max": "BV_MAX", "id_max": "ID_MAX", "te_max": "TE_MAX",
    "pd_max": "PD_MAX", "rth0": "RTH0", "cth0": "CTH0",
    # switches that change the DC current unless they hold the value in DIODE_DC_INERT_AT
    "level": "LEVEL", "ikf": "IKF", "ik": "IKF", "ikr": "IKR",
}
"""Card name (and ngspice alias) -> canonical name of the ngspice 39 diode parameters that do
not change the DC operating point; kept in ``Diodes.non_dc`` and written back on export."""
DIODE_DC_INERT_AT = {"LEVEL": (1.0, "only the level-1 diode is supported"),
                     "TNOM": (27.0, "the circuit runs at 27 °C, and at any other TNOM ngspice rescales IS, BV "
                                    "and RS with EG, XTI, TCV, TRS"),
                     "IKF": (0.0, "a forward knee current changes the DC current and is not modelled"),
                     "IKR": (0.0, "a reverse knee current changes the DC current and is not modelled")}
"""Non-DC parameters accepted only at this value (with the reason)."""
_DIODE_REFUSED = {
    "jsw": "the sidewall saturation current", "ns": "the sidewall emission coefficient",
    "nbv": "the breakdown emission coefficient (the emulator uses N, as ngspice does by default)",
    "area": "the area factor (scale IS and RS instead)", "pj": "the perimeter factor",
    "isr": "the recombination current", "nr": "the recombination emission coefficient",
    "jtun": "the tunnelling current", "jtunsw": "the tunnelling current", "ntun": "the tunnelling current",
    "xtitun": "the tunnelling current", "keg": "the tunnelling current",
}
_SOURCE_SPECS = {"ac", "sin", "pulse", "pwl", "exp", "sffm", "am", "distof1", "distof2", "trnoise", "trrandom"}
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
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f]")  # control characters other than tab


class NetlistError(ValueError):
    """A deck line that cannot be accepted, with where and why."""

    def __init__(self, reason: str, line: int | None = None, source: str = "<deck>"):
        self.reason, self.line, self.source = reason, line, source
        super().__init__(f"{source}:{line}: {reason}" if line is not None else f"{source}: {reason}")


@dataclass(slots=True)
class _Elem:
    letter: str
    name: str
    nodes: list[str]
    value: float | str | None
    line: int
    group: tuple[str, str, bool] | None  # (kind, name, ideal) from "*@ group"


@dataclass
class _Model:
    """A parsed diode card: its DC parameters and its non-DC (NAME, value) pairs."""

    name: str
    dc: dict[str, float]
    non_dc: tuple[tuple[str, float], ...]


@dataclass
class _Deck:
    title: str = ""
    meta: dict = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    models: dict[str, _Model] = field(default_factory=dict)
    elems: list[_Elem] = field(default_factory=list)


@dataclass(slots=True)
class _Line:
    """One logical line: its physical lines (number, text), the first one and its '+' continuations."""

    parts: list[tuple[int, str]]

    @property
    def no(self) -> int:
        return self.parts[0][0]

    @property
    def text(self) -> str:
        return self.parts[0][1] if len(self.parts) == 1 else " ".join(text for _, text in self.parts)

    def tokens(self) -> list[tuple[str, int]]:
        """Whitespace-separated tokens with their physical line; ``key = value`` becomes one token."""
        return [(tok, no) for no, text in self.parts for tok in re.sub(r"\s*=\s*", "=", text).split()]


def _logical_lines(text: str, fail) -> Iterator[_Line]:
    """Strip inline comments and join ``+`` continuations to the last statement (as ngspice does,
    across full-line comments). A generator: a 10^6-line deck is never held as line objects."""
    held: list[_Line] = []  # the last statement and the comments after it, until no '+' can follow
    for no, raw in enumerate(text.splitlines()[1:], start=2):
        if _CONTROL.search(raw):
            fail("control characters are not allowed", no)
        line = raw.strip()
        if not line.startswith("*"):
            line = re.split(r";|\s\$\s|\s\$$", line)[0].strip()
        if not line:
            continue
        if line.startswith("+"):
            if not held:
                fail("continuation line '+' with nothing to continue", no)
            held[0].parts.append((no, line[1:].strip()))
        elif line.startswith("*"):
            if held:
                held.append(_Line([(no, line)]))
            else:
                yield _Line([(no, line)])
        else:
            yield from held
            held = [_Line([(no, line)])]
    yield from held


def _node(token: str, no: int, fail) -> str:
    if not NODE_NAME.match(token):
        fail(f"node name {token!r}: only letters, digits and '_' are accepted", no)
    return GROUND if is_ground_name(token) else token


def _number(token: str, no: int, fail, what: str) -> float:
    try:
        return parse_value(token)
    except ValueError as e:
        fail(f"{what}: {e}", no)


def _diode_model(tokens: list[tuple[str, int]], fail) -> _Model:
    """A ``.model NAME D(...)`` card: parenthesised or not, ``+``-continued, any case, commas allowed."""
    toks = [(t, no) for tok, no in tokens for t in re.sub(r"[(),]", " ", tok).split()]
    if len(toks) < 3 or toks[2][0].lower() != "d":
        fail("only diode models (.model NAME D(...)) are accepted", tokens[0][1])
    name = toks[1][0]
    default = DiodeModel()
    dc = dict(IS=default.IS, N=default.N, RS=default.RS, BV=default.BV, IBV=default.IBV)
    non_dc: dict[str, float] = {}
    given: dict[str, int] = {}
    for tok, no in toks[3:]:
        key, eq, text = tok.partition("=")
        low = key.lower()
        if low in _DIODE_REFUSED:
            fail(f"diode model {name!r}: parameter {key.upper()} ({_DIODE_REFUSED[low]}) changes the DC current "
                 "and is not modelled", no)
        canon = DIODE_DC_PARAMS.get(low) or DIODE_NON_DC_PARAMS.get(low)
        if canon is None:
            fail(f"diode model {name!r}: unknown diode parameter {key!r} (DC: IS, N, RS, BV, IBV; accepted without "
                 f"effect on the DC operating point: {', '.join(sorted(set(DIODE_NON_DC_PARAMS.values())))})", no)
        if not eq or not text:
            fail(f"diode model {name!r}: parameter {key!r} needs a value (NAME=VALUE)", no)
        if canon in given:
            fail(f"diode model {name!r}: {canon} is given twice (lines {given[canon]} and {no})", no)
        given[canon] = no
        value = _number(text, no, fail, f"diode parameter {key}")
        if canon in dc:
            dc[canon] = value
        else:
            inert = DIODE_DC_INERT_AT.get(canon)
            if inert is not None and value != inert[0]:
                fail(f"diode model {name!r}: {canon}={text} is refused ({inert[1]}); only {canon}={inert[0]:g} "
                     "is accepted", no)
            non_dc[canon] = value
    if not (dc["IS"] > 0 and dc["N"] > 0 and dc["RS"] >= 0 and dc["BV"] > 0 and dc["IBV"] > 0):
        fail(f"diode model {name!r}: need IS > 0, N > 0, RS >= 0, BV > 0, IBV > 0", tokens[0][1])
    return _Model(name, dc, tuple(non_dc.items()))


def _source_value(tokens: list[str], no: int, fail) -> list[str]:
    """A V/I line reduced to ``NAME N+ N- VALUE``: ``DC v``, ``DC=v`` and a missing value (0) are
    accepted; AC and transient specifications are refused (operating points only)."""
    head, rest = tokens[:3], tokens[3:]
    if len(rest) == 2 and rest[0].lower() == "dc":
        rest = rest[1:]
    elif len(rest) == 1 and rest[0].lower().startswith("dc="):
        rest = [rest[0][3:]]
    for tok in rest:
        word = re.split(r"[=(]", tok)[0].lower()
        if word in _SOURCE_SPECS:
            fail(f"source {tokens[0]!r}: only a DC value is accepted (DC operating points); "
                 f"its {word.upper()} specification is not", no)
    return head + (rest or ["0"])


def _scan(text: str, fail) -> _Deck:
    deck = _Deck()
    first = text.splitlines()[0] if text.strip() else ""
    deck.title = first.lstrip("*").strip()
    group: tuple[str, str, bool] | None = None
    in_header, ended = True, False
    names_seen: dict[str, int] = {}
    for logical in _logical_lines(text, fail):
        no, line = logical.no, logical.text
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
        located = logical.tokens()
        tokens = [tok for tok, _ in located]
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
                model = _diode_model(located, fail)
                if model.name.lower() in deck.models:
                    fail(f"diode model {model.name!r} is defined twice", no)
                deck.models[model.name.lower()] = model
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
        if letter in "vi" and len(tokens) >= 3:
            tokens = _source_value(tokens, no, fail)
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

    # --- amplifiers: E (gain A, out = sense node) + V sense (0 V, sense -> out) + F (gain A on input),
    # matched through dictionaries so that the scan stays linear in the number of elements
    by_name = {e.name.lower(): e for e in deck.elems}
    senses: dict[str, _Elem] = {}  # floating V elements by their + node (the first one wins)
    controlled: dict[str, _Elem] = {}  # F elements by their controlling source (the first one wins)
    users: dict[str, list[_Elem]] = {}  # R, V, I, D elements by the nodes they touch
    for x in deck.elems:
        if x.letter == "v" and x.nodes[1] != GROUND:
            senses.setdefault(x.nodes[0].lower(), x)
        elif x.letter == "f":
            controlled.setdefault(x.nodes[2].lower(), x)
        if x.letter in "rvid":
            for n in {n.lower() for n in x.nodes[:2]}:
                users.setdefault(n, []).append(x)
    consumed: set[int] = set()
    amps: dict[int, tuple[str, str, float]] = {}  # id(E element) -> (name, output node, gain)
    for e in deck.elems:
        if e.letter != "e":
            continue
        sense_node, ref, inp, cref = e.nodes
        if ref != GROUND or cref != GROUND:
            fail(f"E element {e.name!r}: only ground-referenced amplifiers are supported", e.line)
        sense = senses.get(sense_node.lower())
        fsrc = None if sense is None else controlled.get(sense.name.lower())
        if sense is None or fsrc is None or sense.value != 0 or fsrc.nodes[0].lower() != inp.lower() \
                or fsrc.nodes[1] != GROUND or fsrc.value != e.value:
            fail(f"E element {e.name!r}: E/F elements are accepted only as a bidirectional amplifier "
                 f"(E out_s 0 in 0 A; V out_s out 0; F in 0 V A)", e.line)
        other = next((x for x in users[sense_node.lower()] if x is not sense), None)
        if other is not None:
            fail(f"amplifier {e.name!r}: its sense node {sense_node!r} is also used on line {other.line}", e.line)
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
            slot("diodes", e)["rows"].append((e.name, index[e.nodes[0].lower()], index[e.nodes[1].lower()], model))
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
            models: tuple[_Model, ...] = cols[3]
            dc = {key: [m.dc[key] for m in models] for key in ("IS", "N", "RS", "BV", "IBV")}
            elements.append(Diodes(name, cols[1], cols[2], dc["IS"], dc["N"], dc["RS"], ideal=g["ideal"], names=cols[0],
                                   models=[m.name for m in models], BV=dc["BV"], IBV=dc["IBV"],
                                   non_dc=[m.non_dc for m in models] if any(m.non_dc for m in models) else None))
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


def deck_notes(circuit: Circuit) -> list[str]:
    """One line per diode model that carries non-DC parameters: they are kept and written back,
    but take no part in the operating point (for the command line to print after an import)."""
    found: dict[str, list[str]] = {}
    for g in circuit.groups(Diodes):
        if g.non_dc is None:
            continue
        for k, params in enumerate(g.non_dc):
            model = g.models[k] if g.models is not None else f"of group {g.name}"
            if params and model not in found:
                found[model] = [key for key, _ in params]
    return [f"diode model {model}: {', '.join(keys)} kept for export; they do not change the DC operating point "
            "(charge storage, noise, temperature effects at TNOM = TEMP = 27 °C, switches at their off values), "
            "so neither ngspice's .op nor the emulator uses them" for model, keys in found.items()]
