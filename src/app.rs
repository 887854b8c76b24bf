//! Wiring. (in progress)
