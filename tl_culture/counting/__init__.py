"""The statistic: how often each MLP neuron fires on each group's tokens (`collect`)."""
