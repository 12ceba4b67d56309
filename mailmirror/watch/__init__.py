"""Live mode: file events on both sides turn into prompt syncs (docs/watch.md)."""
