"""Job plumbing around the rounds: the run directory and its lock, starting or resuming, stops on signals,
progress, W&B and offline W&B segments, the embedded model's cache, and the commands that read or launch many
runs (`report`, `sweep`)."""
