"""Data tooling that never ships to the Hub: C4-style cleaning and deduplication (``cleaning``), deterministic
train/validation/test splits (``splits``), and, later, packing and collators."""
