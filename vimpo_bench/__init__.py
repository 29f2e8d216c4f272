"""vimpo-bench: does VIMPO beat GRPO, where, and why?"""

__version__ = "0.1.0"


def grading_version(task_name: str) -> str:
    """The grader version recorded with a run: exact integer match for arith, math-verify otherwise."""
    if task_name == "arith":
        return "arith-exact-v1"
    from vimpo_bench.grading import GRADER_VERSION

    return GRADER_VERSION
