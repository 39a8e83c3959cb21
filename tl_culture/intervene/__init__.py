"""Stage 4, interventions: edits of selected neurons as TransformerLens hooks, and steered generation."""
