include!("sim/build_native.rs");

use std::path::{Path, PathBuf};

fn main() {
    emit_native_rpaths(true);
    compile_libtorch_shims();
}

/// `csrc/` against the headers of the libtorch that torch-sys links (same `LIBTORCH`,
/// same C++ ABI), into a static library that the trainer links. `cuda_graph.cpp` gets
/// its CUDA half (`FLAME_CUDA_GRAPHS`) where that libtorch has a CUDA backend and the CUDA
/// headers are found ([`cuda_include_dirs`]); elsewhere it compiles to entry points that
/// answer with the reason.
fn compile_libtorch_shims() {
    let libtorch = PathBuf::from(std::env::var("LIBTORCH").expect("checked above"));
    // torch-sys's variable and default: libtorch 2.11 is built with the C++11 ABI.
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let cxx11_abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-changed=csrc/last_error.h");
    let mut build = cc::Build::new();
    for file in ["csrc/fused_adam.cpp", "csrc/cuda_graph.cpp"] {
        println!("cargo:rerun-if-changed={file}");
        build.file(file);
    }
    build
        .cpp(true)
        .include(libtorch.join("include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", cxx11_abi.as_str())
        // The libtorch headers trip -Wunused-parameter and friends; they are not ours.
        .warnings(false);
    let torch_lib = libtorch.join("lib");
    match cuda_include_dirs(&libtorch) {
        Some((runtime, crt)) if torch_lib.join("libtorch_cuda.so").exists() => {
            build.define("FLAME_CUDA_GRAPHS", None).include(&runtime);
            if let Some(crt) = crt {
                // Only what the runtime's own directory lacks comes from here.
                build.flag(format!("-idirafter{}", crt.display()));
            }
            // `at::cuda::CUDAGraph` is in torch_cuda (linked by emit_native_rpaths), the
            // streams in c10_cuda.
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
        }
        _ => println!(
            "cargo:warning=no CUDA backend or CUDA headers next to {}: the trainer is built without CUDA graphs",
            libtorch.display()
        ),
    }
    build.compile("flame_libtorch_shims");
}

/// The directory with `cuda_runtime_api.h` and, where that directory lacks
/// `crt/host_config.h` (PyPI's nvidia-cuda-runtime wheels ship the runtime headers but not
/// the compiler's `crt/`), one that has it. Looked for in `CUDA_HOME`, `/usr/local/cuda`,
/// and the PyPI packages installed beside torch: `nvidia/cu13` (CUDA 13 wheels),
/// `nvidia/cuda_runtime` (CUDA 12 wheels) and triton's bundled CUDA headers.
fn cuda_include_dirs(libtorch: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    // LIBTORCH may be a link (`.deps/libtorch`): its neighbours are the real directory's.
    let libtorch = std::fs::canonicalize(libtorch).ok()?;
    let site_packages = libtorch.parent()?;
    let mut candidates: Vec<PathBuf> = std::env::var("CUDA_HOME")
        .map(|home| PathBuf::from(home).join("include"))
        .into_iter()
        .collect();
    candidates.extend([
        PathBuf::from("/usr/local/cuda/include"),
        site_packages.join("nvidia/cu13/include"),
        site_packages.join("nvidia/cuda_runtime/include"),
        site_packages.join("triton/backends/nvidia/include"),
    ]);
    let runtime = candidates
        .iter()
        .find(|dir| dir.join("cuda_runtime_api.h").exists())?;
    let has_crt = |dir: &&PathBuf| dir.join("crt/host_config.h").exists();
    if has_crt(&runtime) {
        return Some((runtime.clone(), None));
    }
    let crt = candidates.iter().find(has_crt)?;
    Some((runtime.clone(), Some(crt.clone())))
}
