//! Static records from zone files. (in progress)
