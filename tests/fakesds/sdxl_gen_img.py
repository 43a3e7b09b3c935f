"""Fake sd-scripts sdxl_gen_img.py (SDXL image generation with LoRAs) for kohyawrap's tests."""

import sys

from library import fake_gen

if __name__ == "__main__":
    fake_gen.main("sdxl_gen_img.py", sys.argv[1:])
