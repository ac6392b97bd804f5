//! kiln-tensor: kiln's n-dimensional arrays, their CPU kernels and reverse-mode autograd.
