"""`python -m bundler` → the command line."""

import sys

from bundler.cli import main

sys.exit(main())
