"""Stage 6, the experiment: one config, the stages run in order, and the run folder they fill."""
