"""Generate from or score with a trained model: `python generate.py --checkpoint RUN_DIR/last.pt --prompt TEXT`."""

import sys

from deqseq.cli import generate_main

if __name__ == "__main__":
    sys.exit(generate_main())
