"""Schedules of the PrimFuncs reforge builds: shared helpers, the CPU rule list, each operator family's, GPU, FPGA.
Imported by reforge's build and tuner and by topi_ext.operators; modules here import helpers, topi_ext's computes, reforge.machine."""
