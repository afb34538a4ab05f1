//! Volume management across a pool's bricks. (Being built.)
