include!("../trainer/build_rpath.rs");

fn main() {
    emit_native_rpaths();
}
