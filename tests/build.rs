include!("../trainer/sim/build_native.rs");

fn main() {
    emit_native_rpaths(true);
}
