//! Parity kernels: filled in by the parity work.
