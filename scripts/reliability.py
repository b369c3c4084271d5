"""Inject each fault of `tests/test_faults.py` several times and run every bad-input case, then
write `results/reliability.md`: fault, repetitions, survived, trials lost, and the commands.

Each fault test asserts the study's outcome itself (every trial present once, TERMINATED, its
evaluations complete, Optuna told once), so a passing repetition is a survived fault with no
trial lost; a failing one is reported with its first error line.

Usage: python scripts/reliability.py --repeat 5 --out results/reliability.md
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAULTS = [
    ("test_a_killed_train_worker_restarts_from_its_last_checkpoint",
     "Ray Train worker SIGKILLed mid-trial (after its first checkpoint)",
     "Train's FailureConfig restarts the run; the worker resumes from the latest checkpoint "
     "(prompt, AdamW state, schedule, step, history); every evaluation 10..120 present once"),
    ("test_a_killed_driver_resumes_with_every_finished_trial_once",
     "`autoprompt search` driver SIGKILLed as soon as a trial finished (4 trials, 2 at a time)",
     "`--resume` finishes the study: 4 rows, all TERMINATED; trials finished before the kill untouched "
     "(same finish time and history, not retrained); Optuna holds exactly 4 COMPLETE trials"),
    ("test_a_node_leaving_mid_study_has_its_trial_rescheduled",
     "a node of a 3-node local cluster (`ray.cluster_utils.Cluster`) removed while running a Train worker",
     "the trial restarts (Train or Tune level) on another node from its checkpoint; both trials "
     "TERMINATED with every evaluation present once"),
    ("test_trials_that_raise_or_run_out_of_memory_fail_alone_and_the_study_goes_on",
     "trials whose configuration raises in the worker (LPT bottleneck 0) or runs out of memory "
     "(bottleneck 2e9: a 256 GB allocation), 4 trials",
     "those trials ERROR with the reason ('out of memory ...; lower --batch-size ...') in trials.parquet, "
     "Optuna told FAIL, the others TERMINATED; not retried by FailureConfig (they would fail again)"),
    ("test_a_results_directory_that_cannot_hold_the_study_fails_before_ray",
     "results directory not writable (a file in its path) and a full disk (free space below the need)",
     "one-line error before Ray starts, nothing written"),
]  # fmt: skip
OTHER_TESTS = [
    ("tests/test_study.py::test_errors_land_in_the_table", "a trial whose loss becomes NaN (lr 1e30)",
     "ERROR with 'loss became nan ... lower --lr' in the table, the study goes on"),
    ("tests/test_fused.py::test_member_with_nan_loss_fails_alone", "a fused-group member with a NaN loss",
     "that member fails alone; the others train exactly as alone"),
    ("tests/test_study.py::test_resume_after_interruption_runs_no_trial_twice", "Ctrl-C (SIGINT) mid-study",
     "`--resume` finishes it; no trial twice; Optuna 4 COMPLETE"),
    ("tests/test_study.py::test_local_ray_listens_on_loopback_only", "local Ray's listening ports (`ss -ltnp`)",
     "every port on 127.0.0.1"),
]  # fmt: skip


def run_pytest(target: str) -> tuple[bool, float, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", target],
        cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    seconds = time.perf_counter() - started
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("E ")]
    return proc.returncode == 0, seconds, (errors[0] if errors else proc.stdout.strip().splitlines()[-1])[:200]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="results/reliability.md")
    parser.add_argument("--bad-input-only", action="store_true", help="rewrite only the bad-input section of --out")
    args = parser.parse_args()
    if args.bad_input_only:
        kept = Path(args.out).read_text(encoding="utf-8").split("## Bad input")[0]
        Path(args.out).write_text(kept + bad_input_section(), encoding="utf-8")
        return

    rows = []
    for name, fault, check in FAULTS:
        outcomes = [run_pytest(f"tests/test_faults.py::{name}") for _ in range(args.repeat)]
        survived = sum(ok for ok, _, _ in outcomes)
        failures = [msg for ok, _, msg in outcomes if not ok]
        mean_s = sum(s for _, s, _ in outcomes) / len(outcomes)
        rows.append((name, fault, check, args.repeat, survived, failures, mean_s))
        print(f"{name}: {survived}/{args.repeat} survived ({mean_s:.0f} s each)", flush=True)
    once = [(target, fault, check, *run_pytest(target)) for target, fault, check in OTHER_TESTS]

    lines = [
        "# Reliability: faults injected into real studies, and bad input",
        "",
        f"Machine: CPU ({os.cpu_count()} cores, {platform.machine()}), local Ray "
        f"(`ray.init(num_cpus=2)` or a 3-node `ray.cluster_utils.Cluster` on 127.0.0.1), tiny random BERT, "
        "SST-2-format data. Every repetition is a fresh pytest process running the real study.",
        "",
        f"Reproduce: `python scripts/reliability.py --repeat {args.repeat}` (or one fault: "
        "`python -m pytest tests/test_faults.py::<test>`).",
        "",
        "## Faults",
        "",
        "| fault | what must hold (asserted) | injected | survived | trials lost | mean s/run | test |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, fault, check, n, survived, failures, mean_s in rows:
        lost = "0" if survived == n else f"see failures ({n - survived} run(s))"
        lines.append(f"| {fault} | {check} | {n} | {survived} | {lost} | {mean_s:.0f} | `{name}` |")
        lines.extend(f"|  | failure: {msg} |  |  |  |  |  |" for msg in failures)
    lines += [
        "",
        "Related checks run once each:",
        "",
        "| fault | what must hold | passed | test |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {fault} | {check} | {'yes' if ok else 'NO: ' + msg} | `{t}` |" for t, fault, check, ok, _, msg in once
    ]
    Path(args.out).write_text("\n".join(lines) + "\n" + bad_input_section(), encoding="utf-8")
    print(f"wrote {args.out}")


def bad_input_section() -> str:
    """Run the bad-input cases; each case's exit code and stderr line come back through the file the
    test appends to when BAD_INPUT_LOG is set (tests/test_bad_input.py)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "cases.jsonl"
        bad = subprocess.run(
            [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests/test_bad_input.py"],
            cwd=REPO, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "BAD_INPUT_LOG": str(log)},
        )  # fmt: skip
        seen = {}
        if log.is_file():
            seen = {c["case"]: c for c in map(json.loads, log.read_text(encoding="utf-8").splitlines())}
    cases = re.findall(
        r"test_bad_input_is_one_line_exit_2_and_writes_nothing\[(.*?)\] (PASSED|FAILED|SKIPPED)", bad.stdout
    )
    passed = sum(status == "PASSED" for _, status in cases)
    lines = [
        f"## Bad input: {passed} of {len(cases)} cases pass",
        "",
        "Each case runs the CLI on a sandbox and asserts exit code 2, exactly one stderr line naming the "
        "problem and the fix, and a byte-identical sandbox afterwards (nothing written). "
        "Reproduce: `python -m pytest tests/test_bad_input.py -v` (this table: "
        "`python scripts/reliability.py --bad-input-only`).",
        "",
        "| case | result | exit | the line (sandbox paths shortened to ...) |",
        "|---|---|---|---|",
    ]
    for name, status in cases:
        case = seen.get(name, {})
        line = str(case.get("line", "")).replace("|", "\\|")
        lines.append(f"| {name} | {status} | {case.get('exit', '')} | {line} |")
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
