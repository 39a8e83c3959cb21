"""The model: loading, the MLP hook points every later stage reads, and how a forward runs."""
