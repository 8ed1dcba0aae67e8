// Shared by the build scripts of `sim`, `trainer`, `tools` and `tests` (each `include!`s
// it): `cargo:rustc-link-arg` only reaches the executables (binaries, tests) of the
// package whose build script prints it, so every package that links MuJoCo (and, for the
// trainer side, libtorch) into an executable needs it.
//
// It bakes the native library locations into the executables, so they run without
// LD_LIBRARY_PATH. With `links_libtorch` it also links libtorch's CUDA backend eagerly so
// `--device cuda` finds it (with the default `--as-needed` only libtorch_cpu would be
// recorded; DESIGN §3). The lab bench (`tools`, `sim`) passes false and needs no libtorch
// at all: `LIBTORCH` is then neither read nor required. Returns the resolved dependency
// directory.

fn emit_native_rpaths(links_libtorch: bool) -> std::path::PathBuf {
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
    let mujoco = resolve(var("MUJOCO_DYNAMIC_LINK_DIR"));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", mujoco.display());
    if links_libtorch {
        let torch_lib = resolve(var("LIBTORCH").join("lib"));
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", torch_lib.display());
        if torch_lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-search=native={}", torch_lib.display());
            println!(
                "cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state"
            );
        }
    }
    resolve(var("FLAME_DEPS_DIR"))
}
