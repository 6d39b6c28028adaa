"""`make demo`: train the XS circuit on real MNIST with EP in the emulator, export the trained
netlist, verify a handful of test digits in ngspice, and write the plots."""
import json
import shutil
from pathlib import Path

import numpy as np

from analog_ep.spice import save_deck
from analog_ep.train import Config, Trainer
from analog_ep.train.plots import conductance_histogram, learning_curve
from analog_ep.train.verify import spice_check

out = Path("out/demo")
if out.exists():
    shutil.rmtree(out)  # the demo always starts fresh
cfg = Config.load(Path(__file__).with_name("demo.toml"))
trainer = Trainer(cfg, out=out)
print(f"circuit: {trainer.circuit.summary()}\ndata: {trainer.data.splits}")
trainer.fit()
d = trainer.data
test_error = trainer.error(d.x_test, d.y_test)
print(f"MNIST test error after {trainer.epoch} epochs: {100 * test_error:.2f} % (10,000 images)")
circuit = trainer.cc.to_circuit()
deck = save_deck(circuit, out / "trained.cir")
volts = np.asarray(d.x_test[:20], dtype=np.float64) * cfg.circuit.input_voltage
chk = spice_check(circuit, volts, d.y_test[:20])
print(f"ngspice vs emulator on {chk.n} test digits: {chk.agree}/{chk.n} classifications agree, "
      f"max |dV| {chk.max_abs_dv:.2g} V, {chk.spice_seconds:.1f} s of ngspice")
learning_curve(trainer.history, out / "learning_curve.png")
conductance_histogram({k: trainer.cc.params[k] for k in trainer.keys}, out / "conductances.png", cfg.train.g_max)
(out / "summary.json").write_text(json.dumps(dict(test_error=test_error, epochs=trainer.epoch, spice_agree=chk.agree,
                                                  spice_n=chk.n, max_abs_dv=chk.max_abs_dv)))
print(f"\nwritten in {out}/: checkpoint.pt (resume/evaluate with analog-ep), trained.cir (the trained "
      f"netlist), metrics.csv/json, learning_curve.png, conductances.png, summary.json")
