"""Stage 5, interventions: edits of selected neurons as TransformerLens hooks, and steered generation."""
