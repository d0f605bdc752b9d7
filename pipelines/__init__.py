"""The DVC stages: one module per dvc.yaml stage, named exactly as the stage. Each has
`run(params)`: read its inputs, call the library (`shopflow/`), write its outputs.
`python -m shopflow <stage>` runs one (dvc.yaml's commands). A stage never imports another
stage, and the library never imports a stage."""
