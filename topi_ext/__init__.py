"""reforge.topi_ext: compute definitions, the operator registry (operators.py) and the schedules package.
Imported by reforge's passes, build and tuner; it imports only TVM, numpy and reforge.machine / reforge.errors."""
