"""What each stage does: generation, competency rating, judging, consumers."""
