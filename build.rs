//! Build script: the git commit a binary is built from, for `corelb --version`,
//! the start-up line, /status and `corelb_build_info` (empty outside a checkout).

fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=CORELB_COMMIT={commit}");
    // Built again when HEAD moves (a commit, a checkout), wherever the git
    // directory is (a worktree's `.git` is a file), and whether the branch's
    // ref is a file of its own or packed.
    println!("cargo:rerun-if-changed=build.rs");
    let git_dir = std::process::Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = git_dir {
        let head = dir.join("HEAD");
        println!("cargo:rerun-if-changed={}", head.display());
        let packed = dir.join("packed-refs");
        if packed.exists() {
            println!("cargo:rerun-if-changed={}", packed.display());
        }
        if let Some(r) = std::fs::read_to_string(&head)
            .ok()
            .and_then(|h| h.strip_prefix("ref: ").map(|r| dir.join(r.trim())))
            .filter(|r| r.exists())
        {
            println!("cargo:rerun-if-changed={}", r.display());
        }
    }
}
