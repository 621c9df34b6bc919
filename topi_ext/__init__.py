"""reforge.topi_ext: compute definitions and default schedules for the operators reforge emits."""
