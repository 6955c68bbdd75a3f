//! `install.sh` puts every tool under its conventional name into a prefix,
//! with manual pages and shell completions generated from the tools' clap
//! definitions; the installed tools then work under those names.
mod harness;

use harness::*;

#[test]
fn install_puts_every_tool_docs_and_completions_into_the_prefix() {
    let bins = built_binaries();
    let d = tempfile::tempdir().unwrap();
    let prefix = d.path().join("prefix");
    let o = std::process::Command::new(repo_root().join("install.sh"))
        .args(["--no-build", "--prefix"])
        .arg(&prefix)
        .env("CARGO_TARGET_DIR", bins.parent().unwrap())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "install.sh failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    for f in [
        "sbin/mkfs.notafs",
        "sbin/fsck.notafs",
        "sbin/fsck.fuse.notafs",
        "bin/notafs",
        "bin/notafs-fuse",
        "share/man/man8/mkfs.notafs.8",
        "share/man/man8/fsck.notafs.8",
        "share/man/man1/notafs.1",
        "share/man/man1/notafs-put.1",
        "share/man/man1/notafs-fuse.1",
        "share/bash-completion/completions/notafs",
        "share/bash-completion/completions/mkfs.notafs",
        "share/bash-completion/completions/fsck.notafs",
        "share/bash-completion/completions/notafs-fuse",
        "share/zsh/site-functions/_notafs",
        "share/zsh/site-functions/_fsck.notafs",
        "share/fish/vendor_completions.d/notafs.fish",
        "share/fish/vendor_completions.d/mkfs.notafs.fish",
    ] {
        assert!(prefix.join(f).is_file(), "{f} not installed");
    }
    // The man pages carry the options of --help (same definitions).
    let page = std::fs::read_to_string(prefix.join("share/man/man1/notafs-put.1")).unwrap();
    assert!(page.contains("parents"), "{page}");
    let page = std::fs::read_to_string(prefix.join("share/man/man8/fsck.notafs.8")).unwrap();
    assert!(page.contains("verify\\-data"), "{page}");
    if let Ok(o) = std::process::Command::new("man")
        .arg("-l")
        .arg(prefix.join("share/man/man8/mkfs.notafs.8"))
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
    {
        if o.status.success() {
            assert!(String::from_utf8_lossy(&o.stdout).contains("mkfs.notafs"));
        }
    }
    // bash loads the completion and completes subcommands.
    let script =
        format!(
        "source {}; COMP_WORDS=(notafs pu); COMP_CWORD=1; COMP_LINE='notafs pu'; COMP_POINT=9; \
         _notafs notafs pu notafs; echo \"${{COMPREPLY[@]}}\"",
        prefix.join("share/bash-completion/completions/notafs").display()
    );
    let o = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("put"),
        "bash completion: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The installed names work: format, write with -p, check.
    let path = format!(
        "{}:{}:{}",
        prefix.join("bin").display(),
        prefix.join("sbin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sh = |cmd: &str| {
        let o = std::process::Command::new("sh")
            .args(["-ec", cmd])
            .current_dir(d.path())
            .env("PATH", &path)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{cmd}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    sh("mkfs.notafs -q -s 64M disk.img");
    sh("echo hello > f && notafs put -p disk.img f a/b/f");
    assert_eq!(sh("notafs cat disk.img a/b/f"), "hello\n");
    sh("fsck.notafs -n disk.img");
    // fsck(8) takes the type from fstab (what the user guide documents
    // instead of `fsck -t notafs`): types notafs and fuse.notafs both run
    // fsck.notafs.
    if sh("command -v fsck || true").trim().is_empty() {
        println!("SKIPPED: fsck(8) (util-linux) is not installed");
    } else {
        for ty in ["notafs", "fuse.notafs"] {
            let img = d.path().join("disk.img");
            std::fs::write(
                d.path().join("fstab"),
                format!("{} /srv/packs {ty} defaults 0 2\n", img.display()),
            )
            .unwrap();
            let out = sh(&format!(
                "LIBMOUNT_FSTAB={}/fstab fsck -V -n {} </dev/null",
                d.path().display(),
                img.display()
            ));
            assert!(out.contains(&format!("fsck.{ty}")), "{ty}: {out}");
            assert!(out.contains("Pass 4"), "{ty}: {out}");
        }
    }
    // Every tool's --help lists the device forms.
    for tool in ["mkfs.notafs", "fsck.notafs", "notafs", "notafs-fuse"] {
        let help = sh(&format!("{tool} --help"));
        for form in ["nbd://", "nbd+unix://", "nbds://", "file:PATH", "/dev/"] {
            assert!(help.contains(form), "{tool} --help lacks {form}:\n{help}");
        }
    }
    // --strip installs smaller binaries that still run.
    let stripped = d.path().join("stripped");
    let o = std::process::Command::new(repo_root().join("install.sh"))
        .args(["--no-build", "--strip", "--prefix"])
        .arg(&stripped)
        .env("CARGO_TARGET_DIR", bins.parent().unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&stripped.join("bin/notafs")) <= size(&prefix.join("bin/notafs")));
    let o = std::process::Command::new(stripped.join("sbin/mkfs.notafs"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(o.status.success());
    // --uninstall takes it all away again.
    let o = std::process::Command::new(repo_root().join("install.sh"))
        .args(["--uninstall", "--prefix"])
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(o.status.success());
    let left: Vec<_> = walk(&prefix)
        .into_iter()
        .filter(|p| p.is_file() || p.is_symlink())
        .collect();
    assert!(left.is_empty(), "left after --uninstall: {left:?}");
}
