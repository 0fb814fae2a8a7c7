//! PV label and PV header.
