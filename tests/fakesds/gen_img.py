"""Fake sd-scripts gen_img.py (SD 1.x / 2.x image generation with LoRAs) for kohyawrap's tests."""

import sys

from library import fake_gen

if __name__ == "__main__":
    fake_gen.main("gen_img.py", sys.argv[1:])
