"""The lab: small real causal language models made here, on the CPU, to run the pipeline on.

A task suite whose answers a program checks (skills.py), a character-level tokenizer saved in
Hugging Face format, a pool of small Llama models trained from scratch on different mixtures of
the skills, so that they differ in competency in level and in shape, and the build that writes
them with a pool YAML for the transformers backend and the prompt files (`karma lab build`).
It imports the project's pieces; nothing in the pipeline imports it.
"""
