"""`python -m drray` is the `drray` command."""

import sys

from drray.cli import main

sys.exit(main())
