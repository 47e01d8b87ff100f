"""``python -m camkit``: the ``camkit`` command."""

from ._cli import main

raise SystemExit(main())
