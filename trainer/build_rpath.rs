// Shared by the build scripts of `trainer`, `tools` and `tests` (each `include!`s it):
// `cargo:rustc-link-arg` only reaches the binaries of the package whose build script
// prints it, so every package that links libtorch/MuJoCo into an executable needs it.
//
// It bakes the native library locations into the executables, so `trainer`, `tools` and
// the tests run without LD_LIBRARY_PATH, and links libtorch's CUDA backend eagerly so
// `--device cuda` finds it (with the default `--as-needed` only libtorch_cpu would be
// recorded; DESIGN §3). Returns the resolved dependency directory.

fn emit_native_rpaths() -> std::path::PathBuf {
    use std::path::PathBuf;
    for var in ["LIBTORCH", "MUJOCO_DYNAMIC_LINK_DIR", "FLAME_DEPS_DIR"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let var = |name: &str| {
        std::env::var(name).map(PathBuf::from).unwrap_or_else(|_| {
            panic!("{name} is unset: run scripts/setup.sh first (it prepares .deps/ for .cargo/config.toml)")
        })
    };
    // Resolve the .deps link so the rpath stays valid for the binary on this machine.
    let resolve = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    let torch_lib = resolve(var("LIBTORCH").join("lib"));
    let mujoco = resolve(var("MUJOCO_DYNAMIC_LINK_DIR"));
    for dir in [&torch_lib, &mujoco] {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
    if torch_lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", torch_lib.display());
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
    }
    resolve(var("FLAME_DEPS_DIR"))
}
