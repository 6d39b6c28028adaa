"""`make demo`: build a small layered circuit, export its deck, run it in ngspice and in the
emulator, compare them node by node, and take one EP gradient."""
from pathlib import Path

import torch

from analog_ep.circuit import layered
from analog_ep.compare import compare
from analog_ep.emulator import compile_circuit
from analog_ep.emulator.ep import ep_gradient, equilibrium_gradient
from analog_ep.spice import read_deck, save_deck

out = Path("out/demo")
out.mkdir(parents=True, exist_ok=True)
circuit = layered("16,8,4", seed=0, amplifier_gain=2.0, g_init=(1e-6, 1e-4))
deck = save_deck(circuit, out / "layered_16_8_4.cir")
print(f"circuit: {circuit.summary()}\ndeck: {deck}")

cmp = compare(read_deck(deck))
cmp.plot(out / "parity.png")
print(cmp.table(5))
print(f"SPICE vs emulator: max |dV| = {cmp.max_abs_dv:.2g} V; ngspice {cmp.spice_seconds * 1e3:.1f} ms, "
      f"emulator {cmp.emulator_seconds * 1e3:.1f} ms ({cmp.iterations} sweeps)")

cc = compile_circuit(circuit)
x = torch.rand(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
y = torch.full((8, 4), 0.05, dtype=torch.float64)
u = cc.inputs_to_sources(x)
beta = 1e-3 * float(cc.params["g:w2p"].sum(0).mean())
ep = ep_gradient(cc, u, y, beta, mode="centered")
exact = equilibrium_gradient(cc, u, y)
flat = lambda g: torch.cat([g[k].reshape(-1) for k in cc.trainable])
err = float((flat(ep.grads) - flat(exact)).norm() / flat(exact).norm())
print(f"EP gradient (centred, beta = {beta:.2g} S) vs exact equilibrium gradient: relative error {err:.1e}")
print(f"written: {deck}, {out / 'parity.png'}")
