"""Floor 5, the methods built on fan-in: CascadeFormer tapers and CascadeFlow Pruning."""
