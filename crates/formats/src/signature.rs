//! Signatures of formats tessera knows.
