//! DNS wire handling. (in progress)
