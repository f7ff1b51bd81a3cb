"""`python -m api.cli` is the `nerfserve` command."""

import sys

from api.cli import main

sys.exit(main())
