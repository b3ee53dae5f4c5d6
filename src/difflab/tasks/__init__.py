"""Tasks on a trained model (one file each), run by the entry points at the repository root."""
