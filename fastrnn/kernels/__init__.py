"""numba kernels only: plain arrays in, results written into preallocated arrays out."""
