include!("build_rpath.rs");

fn main() {
    let deps = emit_native_rpaths();
    // Where the trainer finds the task XMLs and the reference python by default.
    println!("cargo:rustc-env=FLAME_DEFAULT_DEPS={}", deps.display());
}
