"""shopflow: keep an online shop's search ranking and recommendation models fresh and safe.

One module per pipeline stage (`ingest`, `validate`, `prepare`, ...), each a pure core with
its I/O at the edges, plus a few shared libraries: `contract` (the data contract), `privacy`,
`artifacts` (atomic, hashed outputs), `config` (typed params.yaml), `synthetic` (the embedded
simulated shop) and `sources` (one adapter per input format).
"""

__version__ = "0.1.0"
