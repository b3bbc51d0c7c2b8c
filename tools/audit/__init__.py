"""`karma audit`: the ledger of every prompt, from the topics alone.

The pipeline's conservation law: every submitted prompt ends as all the preferences its pairs
yield, or as dead letter(s) naming it with the reason. The audit reads the five topics to their
end offsets (no consumer group, nothing committed) and puts every distinct decoded prompt in
exactly one class:

- complete: every model of the pool answered, every pair has its preference, no backstop;
- complete-late: the same, after an `incomplete` letter (the stragglers came and were paired);
- partial: settled with at least one preference, but something is short (a model failed or
  was named missing, an answer or a pair was dead-lettered);
- dead-lettered: settled with no preference; the letters naming it say why;
- pending / unaccounted: not settled, and its newest prompt, response or pair message is
  younger / older than the backstop. (Counted from the newest, not from the prompt: an answer
  that comes after the rating stage's backstop reopens the prompt, and the stages get a
  backstop's time to pair and judge it before the audit calls it lost.)

"Settled" means nothing is owed any more: every model answered, failed (a failure record) or
was named missing by an `incomplete` letter; every pair has a preference or a judging letter;
fewer than two usable answers carry the rating stage's `unpaired` or `incomplete` letter; and,
where pairing is a pure function of the answers (`competency.online: false`), every pair the
policy picks among the usable answers is on the pairs topic. With online competency the
pairs depend on the verdicts seen so far, so only the pairs that were emitted are checked:
a pair lost before it reached the pairs topic is then invisible to the audit.

Letters are matched to what they concern by the message they point at (source topic,
partition, offset): a judging letter settles its pair, a letter on a response (`exception`,
the rating stage's `too_large`) makes that answer unusable, a generation letter on a prompt
message ends a prompt that no response ever came for (the rating stage never heard of it, so
no backstop letter will come). A pair the rating stage could not write (`too_large`,
`refused`) has a letter that points at no message and names the pair in `record_id`: the pair
is short, not owed. The rating stage's `unpaired` and `incomplete` letters point at no message:
they are matched by the prompt id they name; `unpaired` ends the prompt, and `incomplete`
accounts for the silent models its `models` field names (dead-letter schema version 4). A
letter's reason is prose for people, never read, with one exception: letters written before
version 4 decode with `models` empty, and as every later `incomplete` letter names at least one
model, an `incomplete` letter naming none is an old one; for those alone the models are read
from the reason (whole model names), as the audit did before the field, so that letters still
on the dead-letter topic after an upgrade do not make their prompts unaccounted.

- ledger.py: what the audit reports (`State`, `PromptAccount`, `UndecodablePrompt`, `Ledger`).
- stories.py: what the topics say about each prompt (`read_stories`), the letters filed with it.
- accounts.py: the rules above (`account`, `build_ledger`). Pure, like the two before it.
- runner.py: the topics read to their end (`audit`), and the rating stage's own pairing as the
  expectation (`expected_pairs_for`).
"""

from __future__ import annotations

from karma.tools.audit.accounts import ExpectedPairs, build_ledger
from karma.tools.audit.ledger import LISTING_ORDER, Ledger, PromptAccount, State, UndecodablePrompt
from karma.tools.audit.runner import audit, expected_pairs_for

__all__ = [
    "LISTING_ORDER",
    "ExpectedPairs",
    "Ledger",
    "PromptAccount",
    "State",
    "UndecodablePrompt",
    "audit",
    "build_ledger",
    "expected_pairs_for",
]
