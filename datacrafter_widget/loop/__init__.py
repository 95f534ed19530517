"""Loop algorithms over arrays and callables: prompt strategies, filter, content labels, M2M, metrics, student, evolution, GAP."""
