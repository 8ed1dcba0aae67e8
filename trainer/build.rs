include!("sim/build_native.rs");

fn main() {
    emit_native_rpaths(true);
    compile_libtorch_shims();
}

/// `csrc/` against the headers of the libtorch that torch-sys links (same `LIBTORCH`,
/// same C++ ABI), into a static library that the trainer links.
fn compile_libtorch_shims() {
    let libtorch = std::path::PathBuf::from(std::env::var("LIBTORCH").expect("checked above"));
    // torch-sys's variable and default: libtorch 2.11 is built with the C++11 ABI.
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let cxx11_abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-changed=csrc/fused_adam.cpp");
    cc::Build::new()
        .cpp(true)
        .file("csrc/fused_adam.cpp")
        .include(libtorch.join("include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", cxx11_abi.as_str())
        // The libtorch headers trip -Wunused-parameter and friends; they are not ours.
        .warnings(false)
        .compile("flame_libtorch_shims");
}
