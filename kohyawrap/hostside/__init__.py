"""Programs that run ON the GPU host, uploaded there as files (never imported by the laptop side).

They use the standard library only (a push to the Hugging Face Hub imports huggingface_hub,
which sd-scripts' environment has), because they run with the run's own Python, next to the job,
whether or not a laptop is connected. The launcher reads their source text to upload them.
"""
