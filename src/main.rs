//! `stretto`: the command line of Stretto (being built).
fn main() {
    println!("stretto");
}
