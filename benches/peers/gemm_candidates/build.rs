fn main() {
    if std::env::var("CARGO_FEATURE_OPENBLAS").is_ok() {
        println!("cargo:rustc-link-lib=openblas");
    }
}
