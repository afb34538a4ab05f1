//! Recoverable virtual memory (RVM), in the image of Coda's: a segment file
//! mapped `MAP_PRIVATE` plus a redo log. (Being built.)
