"""Fake sd-scripts sd3_train_network.py (SD3 / SD3.5 LoRA) for kohyawrap's tests."""

import sys

from library import fake_train

if __name__ == "__main__":
    fake_train.main("sd3_train_network.py", sys.argv[1:])
