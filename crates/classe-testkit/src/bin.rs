//! Where the `classe` binary is.

use std::path::PathBuf;

/// The `classe` binary, or None when there is none:
///
/// 1. `built`, when the caller was compiled by cargo with it
///    (`option_env!("CARGO_BIN_EXE_classe")` in the cli crate's tests);
/// 2. `$CLASSE_BIN`, taken as it is (a user's choice);
/// 3. `classe` next to the running executable (`target/debug/loopback`,
///    `target/debug/classe-lab`, or `classe` itself);
/// 4. `classe` one folder up (a test in `target/debug/deps/`).
pub fn classe_bin(built: Option<&str>) -> Option<PathBuf> {
    if let Some(p) = built.map(PathBuf::from).filter(|p| p.is_file()) {
        return Some(p);
    }
    if let Some(p) = std::env::var_os("CLASSE_BIN") {
        return Some(PathBuf::from(p));
    }
    next_to_exe("classe")
}

/// `name` in the running executable's folder or the one above it.
pub fn next_to_exe(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let found = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_file_next_to_this_test() {
        // This test runs as target/debug/deps/classe_testkit-<hash>.
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        assert_eq!(next_to_exe(name), Some(exe.clone()));
        assert_eq!(next_to_exe("no-such-binary-here"), None);
        let built = exe.to_str().unwrap();
        assert_eq!(classe_bin(Some(built)), Some(exe.clone()));
    }
}
