"""Search studies on Ray: Optuna inside Ray Tune, each trial a Ray Train run.

Modules: `options` (StudyOptions), `runner` (run_study, resume_study), `trial` (the Tune
trainable and Train worker), `records` (trials.parquet), `export`, `cluster`, `launch`.
Nothing is imported here: Ray starts a fresh process per trial, and each should import only
what it uses.
"""
