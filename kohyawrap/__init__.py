"""kohyawrap: a thin, exact wrapper over kohya-ss/sd-scripts for LoRA training on rented GPUs."""

__version__ = "0.2.0"
