//! Byte encoding of a volume description and of the pool's volume table. (Being built.)
