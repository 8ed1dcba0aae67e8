include!("build_native.rs");

fn main() {
    let deps = emit_native_rpaths(false);
    // Where the tasks find their XMLs and the conformance tests the reference python by
    // default (`env::deps_dir`), so installed binaries need no environment variables.
    println!("cargo:rustc-env=FLAME_DEFAULT_DEPS={}", deps.display());
}
