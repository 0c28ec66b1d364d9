"""``python -m entropyctl.cli``: the same as the ``entropyctl`` console script."""

from entropyctl.cli import main

raise SystemExit(main())
