"""Stage 5, exploring neurons: their top activating contexts and what each writes to the logits."""
