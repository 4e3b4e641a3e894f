"""One module per stage of the study graph (lsmia.experiments.graph): each imports only what its stage runs."""
