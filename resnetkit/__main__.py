"""``python -m resnetkit`` (and ``torchrun -m resnetkit``) run the command line."""

import sys

from .cli import main

sys.exit(main())
