"""`python -m arseg_ops ...` is the `arseg` command."""
import sys

from .cli import main

sys.exit(main())
