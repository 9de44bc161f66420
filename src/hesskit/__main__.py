"""``python -m hesskit`` (and ``torchrun -m hesskit``) runs the command line."""

import sys

from hesskit.cli.main import main

sys.exit(main())
