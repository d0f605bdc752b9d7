"""`python -m shopflow <stage>`: the same CLI as the `shopflow` console script."""

from shopflow.cli import main

raise SystemExit(main())
