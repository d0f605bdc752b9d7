"""shopflow: keep an online shop's search ranking and recommendation models fresh and safe.

The package by concern (docs/architecture.md draws it):

- `stages`: one module per dvc.yaml stage, named as the stage; each reads its inputs, calls
  the library and writes its outputs. A stage never imports another stage.
- `core`: params, errors, paths, atomic outputs, progress lines, child processes.
- `data`: the data contract, source adapters, the simulator, privacy, validation rules.
- `models`: base encoder, bi-encoder, cross-encoder, BM25, popularity, propensities, index.
- `training`: the shared loop and skeleton, and one task per model.
- `engine`: search / recommend / rank, serving bundles, ONNX.
- `evaluation`: ranking metrics, significance, interleaving, the A/B evaluation and its gate.
- `monitoring`: the drift check.
- `serving`: the HTTP contract, the BentoML model store, Bento builds, running a service.
- `release`: the registry, promotion, deployment, rollback.
- `orchestration` (what Airflow calls), `reporting` (the run report), `bench` (benchmarks).
"""

__version__ = "0.1.0"
