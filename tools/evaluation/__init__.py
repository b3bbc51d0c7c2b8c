"""`karma eval`: the pipeline once per pairing policy over one prompt set, and a report on what
each policy's preferences look like (pairs per prompt, superiority gaps, position consistency,
ties, label accuracy against a ground truth where the models are simulated, agreement with
ZEBRA's labels on the same pairs).

- metrics.py: the figures, pure functions of the collected preferences (`summarise`,
  `PolicySummary`); no Kafka, no files.
- report.py: report.md, report.json and the plots (`write_report`), and the terminal table
  (`summary_table`).
- runner.py: the orchestration (`run_eval`): a worker per policy, the prompts submitted, the wait
  until the pipeline has drained, the preferences read back; and its inputs (`parse_policies`,
  `load_prompts`, `with_pool`).
"""

from __future__ import annotations

from karma.tools.evaluation.metrics import PolicySummary, summarise
from karma.tools.evaluation.report import summary_table, write_report
from karma.tools.evaluation.runner import (
    EvalError,
    EvalResult,
    load_prompts,
    parse_policies,
    run_eval,
    with_pool,
)

__all__ = [
    "EvalError",
    "EvalResult",
    "PolicySummary",
    "load_prompts",
    "parse_policies",
    "run_eval",
    "summarise",
    "summary_table",
    "with_pool",
    "write_report",
]
