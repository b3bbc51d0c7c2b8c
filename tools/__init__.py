"""What is built on the pipeline: `karma demo`, `karma eval`, `karma export`, `karma audit`, and
the worker processes they start. They sit above the workers and may start them; nothing below
imports them."""
