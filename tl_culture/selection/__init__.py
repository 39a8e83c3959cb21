"""Selection: LAPE (`identify`), neuron sets and their culture categories, split-half stability."""
