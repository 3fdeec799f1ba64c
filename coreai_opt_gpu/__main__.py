"""`python -m coreai_opt_gpu ...`: the command line (see `coreai_opt_gpu.cli`)."""

import sys

from coreai_opt_gpu.cli import main

sys.exit(main())
