"""`python -m pipelines <stage>`: the same CLI as the `shopflow` console script."""

from pipelines.cli import main

raise SystemExit(main())
