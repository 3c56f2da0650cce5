"""`python -m jaxdet ...`: the same command as the `jaxdet` script (see `jaxdet.cli`)."""

import sys

from jaxdet.cli import main

if __name__ == "__main__":
    sys.exit(main())
