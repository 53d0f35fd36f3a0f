"""``python -m nslib``: the command line (:mod:`nslib.cli.main`)."""
import sys

from nslib.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
