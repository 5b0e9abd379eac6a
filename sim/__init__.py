"""The readout simulator: NA64 raw data as the readout nodes and the event builder would send it.

Not part of the live runtime (``daq/`` does not import it); the command line, the
service's warm-up, the tests and the benchmarks use it. See :mod:`.simulator`.
"""
