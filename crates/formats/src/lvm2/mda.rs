//! Metadata area header and text buffer.
