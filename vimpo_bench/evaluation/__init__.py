"""`vimpo-bench eval` and the evaluation inside training: `evaluate` (suites, sampling protocols, grading,
metrics with intervals), `targets` (what a --model names and the generator that samples from it), `results`
(what an evaluation produces and how it is recorded) and `lm_eval_tasks` (the same suites as lm-eval tasks).
"""
