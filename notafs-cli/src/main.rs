//! `notafs`: see [`notafs_cli::app`].
fn main() {
    notafs_cli::app::main()
}
