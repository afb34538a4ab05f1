//! The brick daemon: serves `storage` over `transport`. (Being built.)
