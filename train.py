"""Train a DEQ sequence model: `python train.py [--config configs/NAME.yaml] [key=value ...]`.

Without --config (and without --resume) the run uses configs/default.yaml.
"""

import sys
from pathlib import Path

from deqseq.cli import train_main

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"

if __name__ == "__main__":
    sys.exit(train_main(default_config=str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None))
