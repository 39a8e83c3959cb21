"""Stage 0, the model: loading, the MLP hook points every later stage reads, and how a forward runs."""
