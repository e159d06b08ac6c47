"""`python -m shiftaudit_cli`: the same as the `shiftaudit` command."""

import sys

from shiftaudit_cli.main import main

sys.exit(main())
