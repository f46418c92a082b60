"""Train a DEQ sequence model: `python train.py [--config configs/NAME.yaml] [key=value ...]`."""

import sys

from deqseq.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
