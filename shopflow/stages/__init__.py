"""One module per dvc.yaml stage, named exactly as the stage. Each has `run(params)`: read its
inputs, call the library, write its outputs. A stage never imports another stage."""
