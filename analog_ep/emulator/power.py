"""Power at an operating point: what every element group of a settled circuit absorbs, batched
over samples, with Tellegen's theorem as the bookkeeping check.

Sign convention (Tellegen's associated reference directions): every element *absorbs* the
power V·I at its terminals — a resistor, a diode or a nudge conductance what it dissipates
(≥ 0), a source minus what it delivers. Over all elements the absorbed powers sum to zero
(Tellegen's theorem: Σ V·I = 0 for any voltages that satisfy KVL and currents that satisfy
KCL); at a settle that stopped at a finite KCL residual r the sum is Σ_free V·r instead
(:attr:`Powers.residual`).

How each current is obtained:

* conductances, nudges (the IR's ``Nudges`` and the EP nudge of ``settle(beta=, target=)``) and
  SPICE's gmin: g·ΔV;
* Shockley diodes: the emulator's diode law (:func:`.operators.diode_iv`, ngspice's level-1 law
  in every region); ideal clamps: whatever current keeps the KCL of their free node (an
  ideal diode at its bound; absorbed power 0 up to the clamp's voltage tolerance);
* current sources: their value;
* bidirectional amplifiers (ideal transformers, V_out = A·V_in + V_off, I_in = A·I_out): the
  output port delivers the current I_out that its output node's other elements draw, and the
  input port draws A·I_out from the input node — ngspice's VCVS + 0 V sense source + CCCS carry
  exactly these currents (the sense source's branch current is I_out). The input port absorbs
  V_in·A·I_out, the output port delivers V_out·I_out: equal without an offset (lossless), the
  offset's V_off·I_out otherwise;
* voltage sources: the current they push into their node = the current leaving that node
  through all other elements (KCL). ngspice's branch current of ``V n 0`` is its negative, so
  a source delivers −V·I_branch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..circuit.ir import Nudges, VoltageSources
from .compiled import Compiled, DiodeGroup
from .operators import breakdown_voltage, diode_iv
from .settle import SettleResult

PASSIVE = ("conductance", "nudge", "gmin", "diode")
"""The kinds of element group that only dissipate (a negative nudge, −β, is the exception:
an active element, absorbing −β·ΔV²)."""
SOURCES = ("voltage_source", "current_source")
AMPLIFIER_PORTS = ("amplifier_in", "amplifier_out")
Adder = Callable[[str, str, torch.Tensor], None]  # (group key, kind, absorbed power (B,) in W)


@dataclass
class AmplifierPorts:
    """The port voltages (V) and currents (A) of one amplifier group, each (B, n_amplifiers):
    the input port draws ``i_in`` = A·I_out from the input node; the output port delivers
    ``i_out`` into the output node."""

    v_in: torch.Tensor
    i_in: torch.Tensor
    v_out: torch.Tensor
    i_out: torch.Tensor


@dataclass
class Powers:
    """Power absorbed by every element group of a settled batch, W, each (B,).

    Keys: ``g:<group>`` (conductances, nudge groups of the IR; ``kind`` says which),
    ``gmin:<diodes>`` (SPICE's junction conductance, when compiled with gmin), ``d:<diodes>``,
    ``I:<group>`` and ``V:<group>`` (sources), ``amp_in:<group>``/``amp_out:<group>`` (the two
    ports of each amplifier group), and for a settle nudged through ``settle(beta=, target=)``
    ``nudge`` (the β conductances) and ``V:nudge_target`` (their target sources)."""

    absorbed: dict[str, torch.Tensor]
    kind: dict[str, str]  # key -> one of PASSIVE, SOURCES, AMPLIFIER_PORTS
    source_current: torch.Tensor  # (B, n_src), A: current each voltage source pushes into its node
    target_current: torch.Tensor | None  # (B, n_out), A: the same for the EP nudge's target sources
    amplifiers: dict[str, AmplifierPorts]  # amplifier group name -> its ports
    residual: torch.Tensor  # (B,), W: Σ over free nodes of V·(KCL residual); 0 at an exact settle

    def total(self, kinds: tuple[str, ...]) -> torch.Tensor:
        """Σ of the absorbed power (B,), W, over the groups of the given kinds."""
        parts = [p for k, p in self.absorbed.items() if self.kind[k] in kinds]
        return torch.stack(parts).sum(0) if parts else self.residual.new_zeros(self.residual.shape)

    @property
    def dissipated(self) -> torch.Tensor:
        """Power dissipated in the passive elements (B,), W."""
        return self.total(PASSIVE)

    @property
    def delivered(self) -> torch.Tensor:
        """Net power the sources deliver (B,), W (= ``dissipated`` minus what the amplifiers
        deliver, by Tellegen's theorem)."""
        return -self.total(SOURCES)

    @property
    def balance(self) -> torch.Tensor:
        """Σ of all absorbed powers (B,), W: Tellegen's theorem makes it ``residual`` (0 at an
        exact operating point)."""
        return torch.stack(list(self.absorbed.values())).sum(0)


def element_powers(result: SettleResult, *, beta: float | torch.Tensor = 0.0,
                   target: torch.Tensor | None = None) -> Powers:
    """The power absorbed by every element group at a settled state, and the currents of the
    voltage sources and amplifier ports. ``beta`` (S, scalar or per sample) and ``target``
    (B, n_out), V: the EP nudge the settle was run with (``settle(beta=, target=)``), whose
    conductances and target sources are then counted too."""
    cc = result.cc
    p = cc.params
    with torch.no_grad():
        V = result.V
        B = V.shape[0]
        J = V.new_zeros(V.shape)  # current leaving each node through the elements counted so far, A
        absorbed: dict[str, torch.Tensor] = {}
        kind: dict[str, str] = {}
        target_current = None

        def add(key: str, what: str, value: torch.Tensor) -> None:
            absorbed[key] = absorbed.get(key, 0.0) + value
            kind[key] = what

        nudge_groups = {f"g:{g.name}" for g in cc.circuit.groups(Nudges)}
        for blk in cc.blocks:
            g = p[blk.name]
            a, b = V[:, blk.a], V[:, blk.b]
            if blk.dense:  # row and column sums, never a B×m×n temporary
                out_a, out_b = a * g.sum(1) - b @ g.T, b * g.sum(0) - a @ g
                power = (a * out_a).sum(1) + (b * out_b).sum(1)
            else:
                i = g * (a - b)
                out_a, out_b, power = i, -i, (i * (a - b)).sum(1)
            J.index_add_(1, blk.a, out_a)
            J.index_add_(1, blk.b, out_b)
            what = "gmin" if blk.name.startswith("gmin:") else "nudge" if blk.name in nudge_groups else "conductance"
            add(blk.name, what, power)
        if target is not None:
            b = torch.as_tensor(beta, dtype=V.dtype, device=V.device).reshape(-1, 1)
            y = torch.as_tensor(target, dtype=V.dtype, device=V.device).reshape(B, -1)
            i = b * (V[:, cc.outputs] - y)  # from each output into its target source, A
            J.index_add_(1, cc.outputs, i)
            add("nudge", "nudge", (i * (V[:, cc.outputs] - y)).sum(1))
            add("V:nudge_target", "voltage_source", (y * i).sum(1))
            target_current = -i
        clamps = []
        for d in cc.diodes:
            v = V[:, d.anode] - V[:, d.cathode]
            if d.ideal:
                clamps.append(d)
                continue
            IS, nvt = p[f"IS:{d.name}"], p[f"N:{d.name}"] * cc.vt
            i, _ = diode_iv(v, IS, nvt, breakdown_voltage(IS, nvt, p[f"BV:{d.name}"], p[f"IBV:{d.name}"], cc.vt))
            J.index_add_(1, d.anode, i)
            J.index_add_(1, d.cathode, -i)
            add(f"d:{d.name}", "diode", (i * v).sum(1))
        for node, key in cc.currents:
            J.index_add_(1, node, -p[key].expand(B, -1))
            add(key, "current_source", -(V[:, node] * p[key]).sum(1))
        if clamps:
            _add_clamp_currents(result, clamps, V, J, add)
        amplifiers = _amplifier_ports(cc, V, J, add)
        free = torch.as_tensor(cc.free, dtype=torch.long, device=V.device)
        residual = (V[:, free] * J[:, free]).sum(1)
        sources = torch.as_tensor(cc.sources, dtype=torch.long, device=V.device)
        source_current = J[:, sources]
        for g in cc.circuit.groups(VoltageSources):
            nodes = torch.tensor(g.node.tolist(), dtype=torch.long, device=V.device)
            add(f"V:{g.name}", "voltage_source", -(V[:, nodes] * J[:, nodes]).sum(1))
    return Powers(absorbed, kind, source_current, target_current, amplifiers, residual)


ChainLevel = tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _amplifier_chain(cc: Compiled, J: torch.Tensor) -> list[ChainLevel]:
    """Move the current drawn at every amplifier output onto the amplifier, deepest outputs
    first (an amplifier whose input is another one's output adds its input current there):
    J (the current leaving each node, A) at each output becomes 0 and the input node takes
    A·I_out, in place. Returns per chain level (group key, positions in the group, output
    nodes, input nodes, I_out (B, k) in A, I_in = A·I_out (B, k) in A)."""
    levels = []
    for out, inp, key, idx in reversed(cc.amp_chain):
        i_out = J[:, out].clone()
        i_in = cc.params[key][idx] * i_out
        J[:, out] = 0.0
        J.index_add_(1, inp, i_in)
        levels.append((key, idx, out, inp, i_out, i_in))
    return levels


def _amplifier_ports(cc: Compiled, V: torch.Tensor, J: torch.Tensor,
                     add: Adder) -> dict[str, AmplifierPorts]:
    """Port powers of every amplifier group (``amp_in:``, ``amp_out:``) and its ports in the
    group's order; J as in :func:`_amplifier_chain`."""
    ports: dict[str, list[torch.Tensor]] = {}
    for key, idx, out, inp, i_out, i_in in _amplifier_chain(cc, J):
        name = key[2:]
        add(f"amp_in:{name}", "amplifier_in", (V[:, inp] * i_in).sum(1))
        add(f"amp_out:{name}", "amplifier_out", -(V[:, out] * i_out).sum(1))
        if name not in ports:
            ports[name] = [V.new_zeros(V.shape[0], cc.params[key].numel()) for _ in range(4)]
        for slot, value in zip(ports[name], (V[:, inp], i_in, V[:, out], i_out)):
            slot[:, idx] = value
    return {name: AmplifierPorts(*slots) for name, slots in ports.items()}


def _add_clamp_currents(result: SettleResult, clamps: list[DiodeGroup], V: torch.Tensor, J: torch.Tensor,
                        add: Adder) -> None:
    """Currents of ideal clamps: an active clamp (within the solvers' tolerance of its bound,
    1e-12 of the largest node voltage) carries what the KCL of its free node needs; several
    active clamps on one free node share it equally (any split solves the ideal-diode circuit).
    Inactive clamps carry 0. Adds them to J (A) and their powers."""
    cc = result.cc
    nf = cc.n_free
    gain = cc.node_gain()
    r = J.clone()
    _amplifier_chain(cc, r)
    residual = r[:, torch.as_tensor(cc.free, dtype=torch.long, device=V.device)]  # (B, n_free), A, without clamps
    scale = V.abs().amax(1, keepdim=True) * 1e-12
    terms = []  # (diodes, κ of the free terminal, its root, active) per terminal on a free root
    for d in clamps:
        v = V[:, d.anode] - V[:, d.cathode]
        for node, sign in ((d.anode, 1.0), (d.cathode, -1.0)):
            root = cc.root[node]
            on_free = root < nf
            terms.append((d, sign * gain[node], root.clamp(max=nf - 1), (v >= -scale) & on_free))
    count = torch.zeros_like(residual)
    for _, _, root, active in terms:
        count = count.index_add(1, root, active.to(V.dtype))
    currents: dict[str, torch.Tensor] = {}
    for d, kap, root, active in terms:  # κ·i enters the root's KCL: Σ κ·i = −residual
        share = -residual[:, root] / (kap * count[:, root].clamp(min=1))
        i = torch.where(active, share, torch.zeros_like(share))
        currents[d.name] = currents.get(d.name, 0.0) + i
    for d in clamps:
        i = currents[d.name]
        J.index_add_(1, d.anode, i)
        J.index_add_(1, d.cathode, -i)
        add(f"d:{d.name}", "diode", (i * (V[:, d.anode] - V[:, d.cathode])).sum(1))
