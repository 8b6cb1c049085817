"""`python -m agegender_sb` (also under `torchrun ... -m agegender_sb`): the agegender command."""

import sys

from agegender_sb.cli import main

if __name__ == "__main__":
    sys.exit(main())
