"""`python -m services.sim ARGS` is `tokenpool sim ARGS`."""

import sys

from services.cli.main import main

sys.exit(main(["sim", *sys.argv[1:]]))
