"""``python -m learnq`` (also what ``torchrun -m learnq ...`` runs)."""

import sys

from learnq.cli import main

sys.exit(main())
