"""`python -m arseg_ops.train manifest|synthetic|train|eval ...` (the same subcommands as `arseg`)."""
import sys

from .cli import main

sys.exit(main())
