"""``python -m jaxdiff.evaluation``: see `jaxdiff.evaluation.cli`."""

import sys

from jaxdiff.evaluation.cli import main

try:
    main(sys.argv[1:])
except (FileNotFoundError, ValueError) as e:  # bad input: the message says what and how
    sys.exit(f"error: {e}")
