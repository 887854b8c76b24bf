//! The admin HTTP port.
//!
//! STUB: replaced by the admin work (issue 5).
