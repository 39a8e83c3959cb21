"""Stage 3, selection: LAPE (`identify`), neuron sets and their culture categories."""
