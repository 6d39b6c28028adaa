"""`make demo`: train the XS circuit on real MNIST with EP in the emulator, export the trained
netlist, verify a handful of test digits in ngspice, and write the plots."""
import json
import shutil
from pathlib import Path

from analog_ep.studies.evaluate import evaluate_checkpoint
from analog_ep.studies.run import finish_run
from analog_ep.train import Config, Trainer

out = Path("out/demo")
if out.exists():
    shutil.rmtree(out)  # the demo always starts fresh
cfg = Config.load(Path(__file__).with_name("demo.toml"))
trainer = Trainer(cfg, out=out)
print(f"circuit: {trainer.summary()}\ndata: {trainer.data.splits}")
trainer.fit()
done = finish_run(trainer, out)
print(f"MNIST test error after {trainer.epoch} epochs: {100 * done['test_error']:.2f} % (10,000 images)")
chk = evaluate_checkpoint(out, spice=20)
print(f"ngspice vs emulator on {chk['spice_n']} test digits: {chk['spice_agree']}/{chk['spice_n']} classifications "
      f"agree, max |dV| {chk['max_abs_dv']:.2g} V, {chk['spice_seconds']:.1f} s of ngspice")
(out / "summary.json").write_text(json.dumps(dict(test_error=done["test_error"], epochs=trainer.epoch,
                                                  spice_agree=chk["spice_agree"], spice_n=chk["spice_n"],
                                                  max_abs_dv=chk["max_abs_dv"])))
print(f"\nwritten in {out}/: checkpoint.pt (resume/evaluate with analog-ep), trained.cir (the trained "
      f"netlist), metrics.csv/json, learning_curve.png, conductances.png, test.json, summary.json")
