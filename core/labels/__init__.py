"""Labels: the SQLite store, import/export, effective labels and the review queue (no torch)."""
