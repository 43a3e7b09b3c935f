"""Fake sd-scripts sdxl_train_network.py (SDXL LoRA) for kohyawrap's tests."""

import sys

from library import fake_train

if __name__ == "__main__":
    fake_train.main("sdxl_train_network.py", sys.argv[1:])
