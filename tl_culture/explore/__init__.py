"""Exploring neurons: their top activating contexts and what each writes to the logits."""
