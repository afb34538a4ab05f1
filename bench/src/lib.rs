//! Benchmarks that compare Stretto with peers in the same run. (Being built.)
