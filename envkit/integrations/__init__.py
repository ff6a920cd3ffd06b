"""envkit inside the frameworks that write most checkpoints: Lightning, HF Trainer, Accelerate.

Each module imports its framework when it is imported, never before: ``import envkit`` imports
none of them, and a missing framework is one line naming the extra to install.
"""
