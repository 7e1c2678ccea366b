"""bench's own tests: its pure helpers (the test suite under tests/ never imports bench)."""
