"""Interventions: edits of selected neurons as TransformerLens hooks, and steered generation."""
