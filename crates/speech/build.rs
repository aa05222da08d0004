//! With the `whisper` feature, links CTranslate2's own library, which
//! `./scripts/fetch-ctranslate2` fetches by pinned hash and lays out in the workspace's
//! `.cache/ctranslate2/lib`. ct2rs's `system` feature links it by name from the directories on
//! `LIBRARY_PATH` (`.cargo/config.toml` puts that one there); this script checks that it is
//! there and chooses where binaries find it when they run:
//!
//! - `CALLVERIFY_CTRANSLATE2_RPATH`: the run path (default: the directory it was linked
//!   from; the Debian package sets `/usr/lib/callverify`).
//!
//! The run path goes to this crate's own test binaries, and to the packages that depend on
//! this one as `DEP_CALLVERIFY_CTRANSLATE2_RPATH` (the `links` key), whose build script
//! (`dependents-build.rs`) passes it to theirs.

use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBRARY_PATH");
    println!("cargo:rerun-if-env-changed=CALLVERIFY_CTRANSLATE2_RPATH");
    if env::var_os("CARGO_FEATURE_WHISPER").is_none() {
        return;
    }
    let search = env::var_os("LIBRARY_PATH").unwrap_or_default();
    let Some(lib) = env::split_paths(&search).find(|dir| dir.join("libctranslate2.so").exists())
    else {
        panic!(
            "spoken codes (feature `whisper`) link CTranslate2's own library, and no directory \
             on LIBRARY_PATH ({}) holds libctranslate2.so: run ./scripts/fetch-ctranslate2 \
             (and, if LIBRARY_PATH is set in your environment, add the directory it prints)",
            search.to_string_lossy()
        );
    };
    println!(
        "cargo:rerun-if-changed={}",
        lib.join("libctranslate2.so").display()
    );
    let lib = lib
        .canonicalize()
        .expect("the CTranslate2 library directory resolves");
    let rpath =
        env::var("CALLVERIFY_CTRANSLATE2_RPATH").unwrap_or_else(|_| lib.display().to_string());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
    println!("cargo:rpath={rpath}");
}
