"""``python -m arena_training.worker [JOB_FILE]``: run one training job, exit 0 on success."""

from __future__ import annotations

import sys

from arena_training.worker.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
