"""`karma profile`: competency profiles for the kin rule, measured or brought.

- benchmark.py: a benchmark JSONL (prompts with `reference`, `skill`, `scorer` in their
  metadata) read into items, every bad line an error naming file:line.
- tally.py: answers scored and added up per skill (accuracy and n), failures counted.
- table.py: the profile CSV `karma kin --profiles` reads, and its `.counts` sibling.
- lm_eval.py: lm-evaluation-harness `results_*.json` files as the same table.
  These four are pure: no Kafka, no model.
- runner.py: the pool's models run through their backends (`measure_pool`); no Kafka either.
"""

from __future__ import annotations

from karma.tools.profile.benchmark import BenchmarkError, Item, read_benchmark, skills_of
from karma.tools.profile.lm_eval import LmEvalError, Merged, Run, merge_runs, read_run, results_files
from karma.tools.profile.runner import BackendBuildError, Measured, measure_pool
from karma.tools.profile.table import ProfileTable, TableError, counts_path, write_table
from karma.tools.profile.tally import Failure, ModelTally, ScoringError, tally

__all__ = [
    "BackendBuildError",
    "BenchmarkError",
    "Failure",
    "Item",
    "LmEvalError",
    "Measured",
    "Merged",
    "ModelTally",
    "ProfileTable",
    "Run",
    "ScoringError",
    "TableError",
    "counts_path",
    "measure_pool",
    "merge_runs",
    "read_benchmark",
    "read_run",
    "results_files",
    "skills_of",
    "tally",
    "write_table",
]
