"""`python -m aifmon`: the same as the `aifmon` command."""

import sys

from aifmon.cli import main

sys.exit(main())
