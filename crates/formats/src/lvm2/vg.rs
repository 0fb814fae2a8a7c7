//! The VG model.
