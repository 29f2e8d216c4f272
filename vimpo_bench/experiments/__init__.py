"""Many runs at once: `study` (a YAML grid of training runs, how each is evaluated and which cells are done),
`executors` (where a study's cells run: here, in worker processes, or on Ray), `sweep` and `sweep_trials`
(Optuna studies over hyperparameters, with trials that survive a dead worker).
"""
