"""``python -m repo_ext.evaluation --model PATH ...``: the evaluation command line (:mod:`repo_ext.evaluation.cli`)."""

import sys

from repo_ext.evaluation.cli import main

sys.exit(main())
