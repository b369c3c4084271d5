"""Search studies on Ray: Optuna inside Ray Tune, each trial a Ray Train run.

Modules: `options` (StudyOptions from command-line values), `preflight` (what is checked
before Ray starts), `runner` (search, resume: Ray Tune with the Optuna searcher, to the end of
the finalists), `trainable` (the Tune trainable), `trial` (one configuration per Tune trial: its
Train job and worker), `fused_trial` (a fused group per Tune trial), `finalists`, `ranking`
(best, finalists, summary), `records` (trials.parquet), `export`, `cluster`, `report`,
`dashboard`, `progress`.
Nothing is imported here: Ray starts a fresh process per trial, and each should import only
what it uses.
"""
