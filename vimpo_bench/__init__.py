"""vimpo-bench: does VIMPO beat GRPO, where, and why?"""

__version__ = "0.1.0"
