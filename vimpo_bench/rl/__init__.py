"""The engine-neutral parts of one RL step, which both engines call and neither re-implements:
`loop` (draw prompts, the algorithm at step k, score responses into one `Scored` record, group pieces,
reward metrics), `steps` (generation, log-probs, the post-step bookkeeping, in-training evaluation),
`rewards` (the verifier reward with its truncation rule and noise models), `reference` (pi_ref and beta
schedules) and `logprobs` (per-token log-probabilities). The losses themselves are in `vimpo_bench.algorithms`.
"""
