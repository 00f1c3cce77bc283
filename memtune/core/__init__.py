"""Pure rules: errors, units, constants, the memory curve, the plan, options, the watchdog.
Standard library and numpy only: no I/O, no TensorFlow."""
