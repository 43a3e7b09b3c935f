"""Fake sd-scripts flux_train_network.py (FLUX.1 and, with --model_type chroma, Chroma LoRA)."""

import sys

from library import fake_train

if __name__ == "__main__":
    fake_train.main("flux_train_network.py", sys.argv[1:])
