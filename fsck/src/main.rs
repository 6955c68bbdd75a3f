fn main() {
    std::process::exit(notafs_fsck::main_exit())
}
