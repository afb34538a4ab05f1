//! The brick's object store: chunk files driven through io_uring. (Being built.)
