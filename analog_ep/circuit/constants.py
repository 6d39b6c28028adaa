"""Physical constants as ngspice 39 uses them (CODATA 2014, its ``const.h``), so the emulator
and SPICE agree on the diode law to the last digit: with CODATA 2018 values the thermal
voltage differs by 3.5e-7 relative, i.e. ~0.2 uV on a 0.6 V diode drop."""

BOLTZMANN = 1.38064852e-23  # J/K
CHARGE = 1.6021766208e-19  # C
T_NOMINAL = 300.15  # K: ngspice's default TEMP = TNOM = 27 °C
THERMAL_VOLTAGE = BOLTZMANN * T_NOMINAL / CHARGE  # V, kT/q at 27 °C
