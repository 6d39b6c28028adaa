"""`make demo`: build a small layered circuit, export its deck, and run it in ngspice."""
from pathlib import Path

from analog_ep.circuit import layered
from analog_ep.spice import read_deck, run_op, save_deck

out = Path("out/demo")
out.mkdir(parents=True, exist_ok=True)
circuit = layered("16,8,4", seed=0, amplifier_gain=2.0)
deck = save_deck(circuit, out / "layered_16_8_4.cir")
op = run_op(read_deck(deck))
outputs = {n: round(op.node_voltages[n], 6) for n in ("o0", "o1", "o2", "o3")}
print(f"circuit: {circuit.summary()}")
print(f"ngspice operating point in {op.seconds:.3f} s; output voltages: {outputs}")
print(f"deck written to {deck}")
