"""na64-online: online decoding and data-quality monitoring for NA64.

Layers, imports pointing downward only::

    na64_online (cli, config, service)   wires the layers together
    web        FastAPI + Bokeh dashboard   reads immutable per-spill snapshots
    monitor    per-spill aggregation       consumes decoded arrays
    daq        bytes: files, ZeroMQ, simulator, event building
    decoders   numba decoding of the raw format, channel map, reconstruction
"""

__version__ = "0.1.0"
