"""Independent float64 NumPy references for the numerics tests (they never import arjax)."""
