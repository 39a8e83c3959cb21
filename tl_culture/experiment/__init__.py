"""The experiment: one config, the stages run in order, and the run folder they fill."""
