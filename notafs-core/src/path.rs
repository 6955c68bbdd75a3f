//! Path validation. Names are UTF-8 (guaranteed by `&str`), components are
//! separated by `/`, and every component is checked before it reaches the
//! disk, so an image written by notafs never holds a name another tool would
//! choke on.
use crate::{Error, Result};

/// Longest component, in bytes (as ext4 and POSIX NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Longest path, in bytes.
pub const MAX_PATH: usize = 4096;
/// Deepest directory nesting accepted (bounds every walk from the root).
pub const MAX_DEPTH: usize = 64;

/// Validate one name component as stored on disk.
pub fn check_name(name: &[u8]) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name component");
    }
    if name.len() > MAX_NAME {
        return Err("name component longer than 255 bytes");
    }
    if name == b"." || name == b".." {
        return Err("'.' and '..' are not valid names");
    }
    if name.contains(&0) {
        return Err("name contains NUL");
    }
    if name.contains(&b'/') {
        return Err("name contains '/'");
    }
    if std::str::from_utf8(name).is_err() {
        return Err("name is not valid UTF-8");
    }
    Ok(())
}

/// Split a path into validated components. A leading `/` is optional; `""`
/// and `"/"` name the root directory (zero components).
pub fn components(path: &str) -> Result<Vec<&str>> {
    let bad = |reason| Error::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.len() > MAX_PATH {
        return Err(bad("path longer than 4096 bytes"));
    }
    let p = path.strip_prefix('/').unwrap_or(path);
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let p = p.strip_suffix('/').unwrap_or(p);
    let comps: Vec<&str> = p.split('/').collect();
    if comps.len() > MAX_DEPTH {
        return Err(bad("path nested deeper than 64 levels"));
    }
    for c in &comps {
        check_name(c.as_bytes()).map_err(bad)?;
    }
    Ok(comps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert_eq!(components("/a/b").unwrap(), vec!["a", "b"]);
        assert_eq!(components("a/b/").unwrap(), vec!["a", "b"]);
        assert!(components("/").unwrap().is_empty());
        for bad in ["a//b", "a/./b", "../x", "a\0b", &"x".repeat(256)] {
            assert!(components(bad).is_err(), "{bad:?} accepted");
        }
    }
}
