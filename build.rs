//! Stamps the source revision into the binary for `sfb_build_info`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SFB_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    // An explicit value wins (container builds have no .git); then git; else "unknown".
    let revision = std::env::var("SFB_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
                .filter(|r| !r.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SFB_REVISION={revision}");
}
