"""One module per stage of the study graph (lsmia.graph): each imports only what its stage runs."""
