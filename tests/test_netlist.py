import numpy as np
import pytest

from analog_ep.circuit import Conductances, Diodes, DiodeModel, Role, from_graph, layered
from analog_ep.circuit.transforms import fold_sources
from analog_ep.spice import NetlistError, deck_notes, parse_deck, write_deck
from analog_ep.circuit.units import format_value, parse_value

from .conftest import NETLISTS
from .test_circuit import graph


@pytest.mark.parametrize("text, value", [
    ("1k", 1e3), ("10u", 1e-5), ("1meg", 1e6), ("1MEG", 1e6), ("2.2n", 2.2e-9), ("1m", 1e-3),
    ("4.7kohm", 4.7e3), ("1e-14", 1e-14), ("-0.5", -0.5), (".5p", 0.5e-12), ("3mil", 3 * 25.4e-6), ("1f", 1e-15),
    ("2G", 2e9), ("1T", 1e12), ("5a", 5e-18), ("4pF", 4e-12), ("100uA", 1e-4), ("10kOhm", 1e4), ("2.52N", 2.52e-9),
])
def test_si_suffixes(text, value):
    assert parse_value(text) == pytest.approx(value, rel=1e-15)
    if "mil" not in text:  # decimal scale factors are exact: the double nearest the decimal value
        assert parse_value(text) == value


@pytest.mark.parametrize("text", ["1k2", "{r1}", "abc", "1..2", "'1+2'"])
def test_bad_numbers(text):
    with pytest.raises(ValueError):
        parse_value(text)


def test_format_is_stable_under_reciprocal():
    rng = np.random.default_rng(0)
    for g in rng.uniform(1e-7, 1e-3, 2000):
        r = parse_value(format_value(1.0 / g))
        assert format_value(1.0 / (1.0 / r)) == format_value(r)


@pytest.mark.parametrize("make", [
    lambda: layered("4,3,2", seed=1, amplifier_gain=2.0),
    lambda: layered("5,4,3,2", seed=2),
    lambda: layered("3,2", seed=0, diode=DiodeModel(ideal=True)).nudged([0.2, 0.7], 1e-5),
    lambda: layered("3,2", seed=0, diode=DiodeModel(1e-12, 1.5, 20.0), bias=False),
    lambda: layered("3,2", seed=0, diode=DiodeModel(1e-12, 1.5, 20.0, BV=5.0, IBV=1e-4), bias=False),
    lambda: from_graph(graph(), diode=DiodeModel()),
    lambda: fold_sources(layered("6,3,2", seed=0)),
])
def test_round_trip_export_import_export_is_identical(make):
    c = make()
    text = write_deck(c)
    c2 = parse_deck(text)
    assert write_deck(c2) == text
    assert dict(zip(c2.nodes, c2.roles)) == dict(zip(c.nodes, c.roles))
    assert [type(e) for e in c2.elements] == [type(e) for e in c.elements]
    for e, e2 in zip(c.elements, c2.elements):
        if isinstance(e, Conductances):
            np.testing.assert_allclose(e2.edges()[2], e.edges()[2], rtol=1e-14)
        if isinstance(e, Diodes):
            assert e2.ideal == e.ideal
            np.testing.assert_array_equal(e2.BV, e.BV)
            np.testing.assert_array_equal(e2.IBV, e.IBV)


@pytest.mark.parametrize("path", NETLISTS, ids=[p.name for p in NETLISTS])
def test_golden_decks_parse_and_round_trip(path):
    c = parse_deck(path.read_text(), str(path))
    assert write_deck(parse_deck(write_deck(c))) == write_deck(c)


def test_generated_golden_decks_are_current():
    """The generated decks in netlists/ are exactly what the exporter writes today."""
    from pathlib import Path
    import shlex
    from typer.testing import CliRunner
    from analog_ep.cli import app
    for path in NETLISTS:
        header = path.read_text().splitlines()
        cmd = next((l[len("* command: "):] for l in header if l.startswith("* command: ")), None)
        if cmd is None:
            continue
        args = shlex.split(cmd)[1:]
        out = args.index("-o")
        args[out + 1] = str(Path("/tmp") / f"regen_{path.name}")
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        def body(text):  # the command line differs (pytest's argv), the deck must not
            return [l for l in text.splitlines() if not l.startswith("* command: ")]
        assert body(Path(args[out + 1]).read_text()) == body(path.read_text()), \
            f"{path.name} is stale: regenerate it with: {cmd}"


DECK = """* test deck
V1 in 0 DC 1 ; inline comment
R1 in mid
+ 1k
R2 mid 0 1k $ dollar comment
.end
"""


def test_parser_continuation_comments_and_roles():
    c = parse_deck(DECK)
    assert c.nodes == ("0", "in", "mid")
    assert c.roles == (Role.GROUND, Role.INPUT, Role.HIDDEN)
    assert c.group(Conductances, "r").g.tolist() == [1e-3, 1e-3]
    assert c.title == "test deck"


# A 1N4148-style vendor card as real decks carry it: mixed case, engineering suffixes with units,
# '+' continuations with a comment in between, DC keywords, GND; one diode clamps, one breaks down.
CARD_DECK = """* 1N4148 clamp and breakdown
.OPTIONS reltol=1e-9 abstol=1e-15 vntol=1e-12 gmin=1e-15 itl1=1000
v1 in 0 dc 1.5
Vrev top GND DC=120
R1 in a 1K
R2 top k 10kOhm
D1 a 0 d1n4148
Dz 0 k D1N4148
.model D1N4148 d (IS=2.52n RS=.568
* measured at 27 C
+ N=1.752 BV=100 IBV=100u
+ CJ0=4pF VJ=.75 M=.4 FC=.5 TT=20n)
.op
.END
"""


def test_standard_diode_card_is_read_whole_and_written_back():
    c = parse_deck(CARD_DECK)
    d = c.group(Diodes, "d")
    assert d.models == ("D1N4148", "D1N4148")
    for key, value in dict(IS=2.52e-9, N=1.752, RS=0.568, BV=100.0, IBV=1e-4).items():
        np.testing.assert_allclose(getattr(d, key), value, rtol=1e-15)
    assert d.non_dc[0] == d.non_dc[1] == (("CJO", 4e-12), ("VJ", 0.75), ("M", 0.4), ("FC", 0.5), ("TT", 2e-8))
    assert c.fixed_voltages() == {c.index("in"): 1.5, c.index("top"): 120.0}
    notes = deck_notes(c)
    assert len(notes) == 1 and "D1N4148: CJO, VJ, M, FC, TT" in notes[0]
    assert "do not change the DC operating point" in notes[0]
    text = write_deck(c)
    assert ".model D1N4148 D(IS=2.52e-09 N=1.752 RS=0.568 BV=100 IBV=0.0001 CJO=4e-12 VJ=0.75 M=0.4 FC=0.5 TT=2e-08)" \
        in text.splitlines()
    assert write_deck(parse_deck(text)) == text


def test_card_without_non_dc_parameters_has_no_notes():
    c = parse_deck("* t\nV1 a 0 1\nR1 a b 1k\nD1 b 0 dm\n.model dm D IS=1e-14 N=1\n.end\n")
    assert c.group(Diodes, "d").non_dc is None and deck_notes(c) == []
    assert np.isinf(c.group(Diodes, "d").BV).all()


def test_parser_negative_ground_orientation():
    c = parse_deck("* t\nV1 0 a 2\nI1 a 0 1m\nR1 a b 1k\nR2 b 0 1k\n.op\n.end\n")
    assert c.fixed_voltages()[c.index("a")] == -2.0


REFUSED = [
    (".control\nshell rm -rf /\n.endc", 3, "control"),
    (".endc", 3, "control"),
    ("shell touch /tmp/x", 3, "shell"),
    (".include /etc/passwd", 3, "include"),
    (".lib models.lib tt", 3, "lib"),
    (".inc other.cir", 3, "inc"),
    (".param r=1k", 3, "param"),
    (".tran 1n 1u", 3, "tran"),
    (".exec shell ls", 3, "exec"),
    ("X1 a b sub", 3, "letter 'X'"),
    ("M1 a b c d nmos", 3, "letter 'M'"),
    ("C1 a 0 1p", 3, "letter 'C'"),
    ("B1 a 0 V=1", 3, "letter 'B'"),
    ("R3 a b {rval}", 3, "number"),
    ("R3 a b 0", 3, "> 0"),
    ("R3 a b -1k", 3, "> 0"),
    ("R3 a b 1k extra", 3, "fields"),
    ("R3 a a 1k", None, "itself"),
    ("V2 a b 1", None, "floating"),
    ("E1 a 0 b 0 2", None, "bidirectional amplifier"),
    ("F1 a 0 V1 2", None, "bidirectional amplifier"),
    ("D1 a b nomodel", None, "not defined"),
    (".model q1 NPN(BF=100)", 3, "diode models"),
    (".model dd D(IS=1e-14 XYZ=5)", 3, "unknown diode parameter 'XYZ'"),
    (".model dd D(IS=1e-14\n+ N=1 ikf=10m)", 4, "IKF=10m is refused"),
    (".model dd D(IS=1e-14 NBV=2)", 3, "NBV"),
    (".model dd D IS=1e-14\n* a comment\n+ TNOM=25", 5, "TNOM=25 is refused"),
    (".model dd D(LEVEL=3)", 3, "level-1"),
    (".model dd D(CJO=1p cj0=2p)", 3, "given twice"),
    (".model dd D(IS)", 3, "needs a value"),
    (".model dd D(BV=-5)", 3, "BV > 0"),
    (".model dd D(IS=1e-14 ISR=1n)", 3, "recombination"),
    ("V2 c 0 DC 1 AC 1", 3, "AC specification"),
    ("V2 c 0 SIN(0 1 1k)", 3, "SIN specification"),
    (".options temp=50", 3, "temp"),
    ("R3 a;b 1k", 3, "fields"),
    ("R3 a b$c 1k", 3, "node name"),
    ("R1 a b 2k", 3, "already defined"),
]


@pytest.mark.parametrize("line, lineno, message", REFUSED, ids=[r[0].split()[0] + str(i) for i, r in enumerate(REFUSED)])
def test_refused_constructs(line, lineno, message):
    deck = f"* refused\nR1 a b 1k\n{line}\nV1 a 0 1\nR9 b 0 1k\n.op\n.end\n"
    with pytest.raises(NetlistError) as err:
        parse_deck(deck, "deck.cir")
    assert message.lower() in str(err.value).lower()
    if lineno is not None:
        assert err.value.line == lineno and f"deck.cir:{lineno}:" in str(err.value)


def test_nothing_after_end():
    with pytest.raises(NetlistError, match="follow .end"):
        parse_deck("* t\nV1 a 0 1\n.end\n.control\n")


def test_amplifier_triple_is_recognised():
    from analog_ep.circuit import Amplifiers
    text = (NETLISTS[0].parent / "hopfield_triangle.cir").read_text()
    c = parse_deck(text)
    amp = c.group(Amplifiers, "amp")
    assert amp.gain.tolist() == [-1.0]
    assert c.nodes[amp.inp[0]] == "c" and c.nodes[amp.out[0]] == "cinv"
    assert c.roles[c.index("cinv")] is Role.INTERNAL
    assert "inv_s" not in c.nodes


def test_check_command_prints_the_note(tmp_path):
    from typer.testing import CliRunner
    from analog_ep.cli import app
    path = tmp_path / "card.cir"
    path.write_text(CARD_DECK)
    res = CliRunner().invoke(app, ["check", str(path)])
    assert res.exit_code == 0, res.output
    assert "note: diode model D1N4148: CJO, VJ, M, FC, TT kept for export" in res.output


def test_parser_time_is_linear_in_the_number_of_amplifiers():
    """Amplifier triples (E + sense V + F) are matched by dictionary: a 10x larger deck costs at
    most 30x the parser's CPU time (linear: ~10x; the quadratic matching this guards against:
    ~100x). CPU time of this process (time.process_time), not wall-clock time, so other
    processes on the machine do not count; the minimum of 5 alternating repeats of each size.
    The garbage collector is paused while measuring: its full collections scan every object
    alive in the test process, a cost that depends on the other tests, not on the parser."""
    import gc
    import time
    small, big = (write_deck(layered(f"2,{n},2", seed=0, diode=None, bias=False)) for n in (400, 4000))
    assert big.count("\nE") == 10 * small.count("\nE") == 4000
    best = {small: float("inf"), big: float("inf")}
    for _ in range(5):
        for text in (small, big):
            gc.collect()
            gc.disable()
            try:
                t0 = time.process_time()
                parse_deck(text)
                best[text] = min(best[text], time.process_time() - t0)
            finally:
                gc.enable()
    assert best[big] <= 30 * best[small], f"{best[big]:.3f} s vs {best[small]:.3f} s of CPU time"
