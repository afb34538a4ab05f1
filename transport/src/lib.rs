//! The brick wire protocol and its connections. (Being built.)
