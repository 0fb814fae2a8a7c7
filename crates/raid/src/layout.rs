//! md geometry: filled in by the layout work.
