"""Fake sd-scripts train_network.py (SD 1.x / 2.x LoRA) for kohyawrap's tests."""

import sys

from library import fake_train

if __name__ == "__main__":
    fake_train.main("train_network.py", sys.argv[1:])
