//! `mkfs-notafs`: see the `mkfs` library. Cargo cannot build a binary named
//! `mkfs.notafs` (a dot is not valid in a crate name), so install it under
//! that name: `install -m755 target/release/mkfs-notafs /usr/sbin/mkfs.notafs`
//! (then `mkfs -t notafs` finds it).
fn main() {
    mkfs::main()
}
