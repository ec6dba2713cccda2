//! The `sipmesh` binary.

fn main() {
    eprintln!("sipmesh: the node is under construction; see README.md for what runs today");
    std::process::exit(2);
}
