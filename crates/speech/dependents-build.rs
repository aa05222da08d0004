//! The build script of the packages whose binaries and tests link this crate (`callverify`,
//! `callverify-testkit`): with spoken codes on, they find the CTranslate2 library at the run
//! path this crate's build.rs chose.

fn main() {
    if let Ok(rpath) = std::env::var("DEP_CALLVERIFY_CTRANSLATE2_RPATH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
    }
}
