include!("../trainer/sim/build_native.rs");

fn main() {
    // The lab bench links MuJoCo, never libtorch.
    emit_native_rpaths(false);
}
