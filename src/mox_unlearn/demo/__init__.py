"""The self-contained CPU demo benchmark: invented profiles, a tiny model trained from scratch, TOFU metrics."""
